package clientapi

import (
	"crypto/sha256"
	"path/filepath"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/internal/authn"
)

// MaxTokenAge exports maxTokenAge to the external tests.
const MaxTokenAge = maxTokenAge

// The token cache keeps an entry for maxTokenAge, refuses a put read
// before a drop (a logout racing a request's session read), and a drop
// empties it.
func TestTokenCacheGenerationsAndAge(t *testing.T) {
	c := newTokenCache(filepath.Join(t.TempDir(), "mark"))
	h := sha256.Sum256([]byte("mya_x"))
	now := time.Unix(1000, 0)
	e := tokenEntry{device: authn.Device{UserID: "@a:x", DeviceID: "D"}, readAt: now}

	gen, _ := c.generation()
	c.put(gen, h, e)
	if got, ok := c.get(h, now.Add(maxTokenAge-time.Millisecond)); !ok || got.device.DeviceID != "D" {
		t.Fatalf("fresh entry not served: %v %v", got, ok)
	}
	if _, ok := c.get(h, now.Add(maxTokenAge)); ok {
		t.Fatal("an entry as old as maxTokenAge was served")
	}
	if _, ok := c.get(h, now.Add(-time.Second)); ok {
		t.Fatal("an entry read in the future (clock stepped back) was served")
	}

	// A read that started before a drop cannot put its answer back.
	gen, _ = c.generation()
	c.drop()
	c.put(gen, h, e)
	if _, ok := c.get(h, now); ok {
		t.Fatal("an entry read before a drop was kept")
	}
	gen, _ = c.generation()
	c.put(gen, h, e)
	c.drop()
	if _, ok := c.get(h, now); ok {
		t.Fatal("drop left an entry")
	}

	var off *tokenCache // the admin commands and Redis: no cache
	gen, _ = off.generation()
	off.put(gen, h, e)
	if _, ok := off.get(h, now); ok {
		t.Fatal("a nil cache served an entry")
	}
}

// An entry serves only while the revocation mark holds the value read
// before its session was: another process rewriting it (after revoking
// sessions) ends every entry at once.
func TestTokenCacheRevocationMark(t *testing.T) {
	mark := filepath.Join(t.TempDir(), "mark")
	c := newTokenCache(mark)
	h := sha256.Sum256([]byte("mya_y"))
	now := time.Now()

	// No mark file yet: entries are read under "".
	gen, m := c.generation()
	if m != "" {
		t.Fatalf("mark without a file: %q", m)
	}
	c.put(gen, h, tokenEntry{device: authn.Device{DeviceID: "D"}, readAt: now, mark: m})
	if _, ok := c.get(h, now); !ok {
		t.Fatal("entry not served under an unchanged (absent) mark")
	}
	other := &Accounts{revocationMark: mark}
	other.rewriteRevocationMark()
	if _, ok := c.get(h, now); ok {
		t.Fatal("entry served after another process wrote the mark")
	}

	gen, m = c.generation()
	if m == "" {
		t.Fatal("written mark not read")
	}
	c.put(gen, h, tokenEntry{device: authn.Device{DeviceID: "D"}, readAt: now, mark: m})
	if _, ok := c.get(h, now); !ok {
		t.Fatal("entry read under the current mark not served")
	}
	other.rewriteRevocationMark()
	if _, ok := c.get(h, now); ok {
		t.Fatal("entry served after the mark was rewritten")
	}
}

// DropTokenCache empties the server's token cache (benchmarks of the
// uncached path).
func (s *Server) DropTokenCache() { s.accounts.tokens.drop() }
