package clientapi

import (
	"crypto/sha256"
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
	c := newTokenCache()
	h := sha256.Sum256([]byte("mya_x"))
	now := time.Unix(1000, 0)
	e := tokenEntry{device: authn.Device{UserID: "@a:x", DeviceID: "D"}, readAt: now}

	gen := c.generation()
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
	gen = c.generation()
	c.drop()
	c.put(gen, h, e)
	if _, ok := c.get(h, now); ok {
		t.Fatal("an entry read before a drop was kept")
	}
	c.put(c.generation(), h, e)
	c.drop()
	if _, ok := c.get(h, now); ok {
		t.Fatal("drop left an entry")
	}

	var off *tokenCache // the admin commands and Redis: no cache
	off.put(off.generation(), h, e)
	if _, ok := off.get(h, now); ok {
		t.Fatal("a nil cache served an entry")
	}
}
