package clientapi

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/storage"
)

// MaxTokenAge exports maxTokenAge to the external tests.
const MaxTokenAge = maxTokenAge

// DropTokenCache empties the server's token cache (benchmarks of the
// uncached path).
func (s *Server) DropTokenCache() { s.accounts.tokens.drop() }

// SetMaxTokenAge shortens the server's token cache entry age (tests of
// what only the age bounds).
func (s *Server) SetMaxTokenAge(d time.Duration) { s.accounts.tokens.maxAge.Store(int64(d)) }

// TokenCached reports whether the server's token cache would serve
// token now without reading its session.
func (s *Server) TokenCached(token string) bool {
	_, ok := s.accounts.tokens.get(sha256.Sum256([]byte(token)), time.Now())
	return ok
}

func testTokenCache(t *testing.T) (*tokenCache, string) {
	t.Helper()
	mark := filepath.Join(t.TempDir(), "mark")
	c, err := newTokenCache(mark, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return c, mark
}

// cacheNow reads the generation and mark and puts an entry read under
// them, as VerifyAccessToken does; it reports whether it could be kept.
func cacheNow(c *tokenCache, h [sha256.Size]byte, now time.Time) bool {
	gen, mark, keep := c.generation()
	if !keep {
		return false
	}
	c.put(gen, h, tokenEntry{device: authn.Device{UserID: "@a:x", DeviceID: "D"}, readAt: now, mark: mark})
	return true
}

// The token cache keeps an entry for maxTokenAge, refuses a put read
// before a drop (a logout racing a request's session read), and a drop
// empties it.
func TestTokenCacheGenerationsAndAge(t *testing.T) {
	c, _ := testTokenCache(t)
	h := sha256.Sum256([]byte("mya_x"))
	now := time.Unix(1000, 0)

	if !cacheNow(c, h, now) {
		t.Fatal("entry not kept under a fresh mark")
	}
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
	gen, mark, _ := c.generation()
	c.drop()
	c.put(gen, h, tokenEntry{readAt: now, mark: mark})
	if _, ok := c.get(h, now); ok {
		t.Fatal("an entry read before a drop was kept")
	}
	cacheNow(c, h, now)
	c.drop()
	if _, ok := c.get(h, now); ok {
		t.Fatal("drop left an entry")
	}

	var off *tokenCache // the admin commands and Redis: no cache
	if cacheNow(off, h, now) {
		t.Fatal("a nil cache kept an entry")
	}
	if _, ok := off.get(h, now); ok {
		t.Fatal("a nil cache served an entry")
	}
}

// The cache stays bounded: when full, entries older than maxTokenAge go
// first, and if all are young it is emptied.
func TestTokenCacheBounded(t *testing.T) {
	c, _ := testTokenCache(t)
	now := time.Unix(1000, 0)
	young := sha256.Sum256([]byte("young"))
	cacheNow(c, young, now.Add(maxTokenAge))
	for i := range maxTokenEntries - 1 {
		cacheNow(c, sha256.Sum256(fmt.Appendf(nil, "old%d", i)), now)
	}
	if len(c.byHash) != maxTokenEntries {
		t.Fatalf("%d entries, want %d", len(c.byHash), maxTokenEntries)
	}
	later := now.Add(maxTokenAge + time.Second)
	cacheNow(c, sha256.Sum256([]byte("new")), later)
	if len(c.byHash) != 2 {
		t.Fatalf("%d entries after evicting the old ones, want 2 (young and new)", len(c.byHash))
	}
	if _, ok := c.get(young, later); !ok {
		t.Fatal("a young entry was evicted with the old ones")
	}
	for i := range maxTokenEntries {
		cacheNow(c, sha256.Sum256(fmt.Appendf(nil, "more%d", i)), later)
	}
	if len(c.byHash) > maxTokenEntries {
		t.Fatalf("%d entries, more than %d", len(c.byHash), maxTokenEntries)
	}
}

// An entry serves only while the revocation mark holds the value read
// before its session was: another process rewriting it (after revoking
// sessions) ends every entry at once.
func TestTokenCacheRevocationMark(t *testing.T) {
	c, mark := testTokenCache(t)
	h := sha256.Sum256([]byte("mya_y"))
	now := time.Now()

	// The server creates the mark file, empty.
	if b, err := os.ReadFile(mark); err != nil || len(b) != 0 {
		t.Fatalf("mark file after start: %q %v", b, err)
	}
	if !cacheNow(c, h, now) {
		t.Fatal("entry not kept under the empty mark")
	}
	if _, ok := c.get(h, now); !ok {
		t.Fatal("entry not served under an unchanged mark")
	}
	other := &Accounts{revocationMark: mark}
	other.rewriteRevocationMark()
	if _, ok := c.get(h, now); ok {
		t.Fatal("entry served after another process wrote the mark")
	}

	if !cacheNow(c, h, now) {
		t.Fatal("entry not kept under a written mark")
	}
	if _, ok := c.get(h, now); !ok {
		t.Fatal("entry read under the current mark not served")
	}
	other.rewriteRevocationMark()
	if _, ok := c.get(h, now); ok {
		t.Fatal("entry served after the mark was rewritten")
	}
}

// A command writes a pending mark before its commit: it ends every entry
// read before, and nothing read while it is there is kept — so a command
// killed after its commit, before its final write, leaves nothing stale.
func TestTokenCachePendingMark(t *testing.T) {
	c, mark := testTokenCache(t)
	h := sha256.Sum256([]byte("mya_p"))
	now := time.Now()
	other := &Accounts{revocationMark: mark}
	other.rewriteRevocationMark()
	cacheNow(c, h, now)

	if err := other.writeRevocationMark(pendingMarkPrefix); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.get(h, now); ok {
		t.Fatal("entry read before the pending mark served")
	}
	if cacheNow(c, h, now) {
		t.Fatal("an entry read under a pending mark was kept")
	}
	if _, ok := c.get(h, now); ok {
		t.Fatal("entry read under a pending mark served")
	}
	other.rewriteRevocationMark() // the command's final write
	if !cacheNow(c, h, now) {
		t.Fatal("entry not kept after the final mark")
	}
	if _, ok := c.get(h, now); !ok {
		t.Fatal("entry read after the final mark not served")
	}
}

// The mark file deleted, or replaced by a rename, while the server holds
// it open: a command's new file is seen at once, not the old inode.
func TestTokenCacheMarkReplaced(t *testing.T) {
	for _, how := range []string{"deleted", "renamed over"} {
		t.Run(how, func(t *testing.T) {
			c, mark := testTokenCache(t)
			h := sha256.Sum256([]byte("mya_r"))
			now := time.Now()
			other := &Accounts{revocationMark: mark}
			other.rewriteRevocationMark()
			cacheNow(c, h, now)
			if _, ok := c.get(h, now); !ok {
				t.Fatal("entry not served")
			}
			switch how {
			case "deleted":
				if err := os.Remove(mark); err != nil {
					t.Fatal(err)
				}
				other.rewriteRevocationMark() // creates a new file
			case "renamed over":
				tmp := mark + ".new"
				if err := os.WriteFile(tmp, []byte("replacement"), 0o600); err != nil {
					t.Fatal(err)
				}
				if err := os.Rename(tmp, mark); err != nil {
					t.Fatal(err)
				}
			}
			if _, ok := c.get(h, now); ok {
				t.Fatal("entry served after the mark file was replaced")
			}
			if !cacheNow(c, h, now) {
				t.Fatal("entry not kept under the new file")
			}
			if _, ok := c.get(h, now); !ok {
				t.Fatal("entry read under the new file not served")
			}
			other.rewriteRevocationMark()
			if _, ok := c.get(h, now); ok {
				t.Fatal("the new file's rewrite not seen")
			}
		})
	}
}

// A mark too long to be one of ours is unreadable: nothing is served or kept.
func TestTokenCacheMarkTooLong(t *testing.T) {
	c, mark := testTokenCache(t)
	h := sha256.Sum256([]byte("mya_l"))
	now := time.Now()
	cacheNow(c, h, now)
	if err := os.WriteFile(mark, []byte(strings.Repeat("x", maxMarkLen+1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.get(h, now); ok {
		t.Fatal("entry served under an over-long mark")
	}
	if cacheNow(c, h, now) {
		t.Fatal("entry kept under an over-long mark")
	}
}

// In another process (the commands), sessionsChanged writes the pending
// mark inside the transaction, before the commit, and a fresh one after
// it; a write that fails still ends with a fresh mark; and a pending mark
// that cannot be written rolls the change back.
func TestRevocationMarkWrites(t *testing.T) {
	ctx := context.Background()
	db, err := storage.Open(ctx, storage.Options{Engine: storage.SQLite, SQLitePath: filepath.Join(t.TempDir(), "db")})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	mark := filepath.Join(t.TempDir(), "mark")
	a := &Accounts{db: db, revocationMark: mark}
	read := func() string {
		t.Helper()
		b, err := os.ReadFile(mark)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}

	var inside string
	if err := a.writeSessions(ctx, func(tx storage.Tx) error {
		if err := a.sessionsChanged(tx); err != nil {
			return err
		}
		b, err := os.ReadFile(mark) // no t.Fatal here: this is the writer's goroutine
		inside = string(b)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	after := read()
	if !strings.HasPrefix(inside, pendingMarkPrefix) {
		t.Fatalf("mark inside the transaction %q, want pending", inside)
	}
	if after == "" || strings.HasPrefix(after, pendingMarkPrefix) {
		t.Fatalf("mark after the commit %q, want a fresh value", after)
	}

	failed := errors.New("failed")
	err = a.writeSessions(ctx, func(tx storage.Tx) error {
		if err := a.sessionsChanged(tx); err != nil {
			return err
		}
		return failed
	})
	if !errors.Is(err, failed) {
		t.Fatalf("err %v", err)
	}
	if m := read(); m == "" || m == after || strings.HasPrefix(m, pendingMarkPrefix) {
		t.Fatalf("mark after a failed write %q (before %q), want a fresh value", m, after)
	}

	a.revocationMark = filepath.Join(t.TempDir(), "no such dir", "mark")
	ran := false
	err = a.writeSessions(ctx, func(tx storage.Tx) error {
		if err := a.sessionsChanged(tx); err != nil {
			return err
		}
		ran = true
		return nil
	})
	if err == nil || ran {
		t.Fatalf("a change went on without its pending mark: err %v", err)
	}
}
