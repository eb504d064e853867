package clientapi

import (
	"crypto/sha256"
	"sync"
	"time"

	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/storage"
)

// tokenCache remembers access tokens that VerifyAccessToken found valid,
// so that a client sending many requests costs one session read per
// token per maxTokenAge instead of one per request (a read on SQLite
// under writes re-reads its pages: it was a tenth of a message send's
// CPU).
//
// Staleness. Every change in this process that can end a token's
// validity — a device's sessions deleted (logout, logout/all, device
// deletion, a new login reusing the device ID, a password change with
// logout, deactivation) and a refresh replacing the access token — goes
// through Accounts, which calls sessionsChanged inside its transaction:
// once that commits, and before the request that made the change is
// answered, the whole cache is dropped, so the next request reads the
// session table again. A read that started before the drop cannot put
// its stale answer back: put only keeps an entry read under the current
// generation. The expiry time is cached with the entry and checked on
// every hit. A change made by another process (the `myelin user`
// command run beside a live server) is seen once the entry is older than
// maxTokenAge; with Redis configured (several processes on one
// database) the cache is off.
//
// Concurrency: guarded by mu.
type tokenCache struct {
	mu  sync.Mutex
	gen uint64 // bumped by every drop
	// byHash maps the token's SHA-256 to what its session said.
	byHash map[[sha256.Size]byte]tokenEntry
}

type tokenEntry struct {
	device  authn.Device
	expires int64 // access_expires_ts; 0: never
	readAt  time.Time
}

// maxTokenAge bounds how long an entry serves without a read, and so how
// late a change made by another process is seen.
const maxTokenAge = time.Second

// maxTokenEntries bounds the cache; when full it is emptied.
const maxTokenEntries = 10000

func newTokenCache() *tokenCache {
	return &tokenCache{byHash: make(map[[sha256.Size]byte]tokenEntry)}
}

// get returns the entry of hash when there is one younger than
// maxTokenAge. A nil cache has none.
func (c *tokenCache) get(hash [sha256.Size]byte, now time.Time) (tokenEntry, bool) {
	if c == nil {
		return tokenEntry{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.byHash[hash]
	if !ok || now.Sub(e.readAt) >= maxTokenAge || now.Before(e.readAt) {
		return tokenEntry{}, false
	}
	return e, true
}

// generation is read before the session is: put keeps the entry only if
// no drop happened in between.
func (c *tokenCache) generation() uint64 {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

func (c *tokenCache) put(gen uint64, hash [sha256.Size]byte, e tokenEntry) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen {
		return
	}
	if len(c.byHash) >= maxTokenEntries {
		c.byHash = make(map[[sha256.Size]byte]tokenEntry)
	}
	c.byHash[hash] = e
}

// drop forgets every entry.
func (c *tokenCache) drop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	clear(c.byHash)
}

// sessionsChanged is called inside every transaction that deletes
// sessions, replaces an access token or deactivates an account: the
// token cache is dropped as soon as it commits (before the caller's
// request is answered).
func (a *Accounts) sessionsChanged(tx storage.Tx) {
	if a.tokens != nil {
		tx.AfterCommit(a.tokens.drop)
	}
}
