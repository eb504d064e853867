package clientapi

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"os"
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
// every hit.
//
// Other processes. The `myelin user` commands (deactivate, passwd) change
// sessions straight in the database while the server runs. Every process
// rewrites the revocation mark — a file beside the SQLite database holding
// a fresh random value — after each such commit and before it reports
// success. The server reads the mark before reading a session and keeps
// it with the entry; a hit is served only while the file still holds that
// value, so once a command has said "revoked", the next request reads the
// session table. (A command killed between its commit and the rewrite is
// seen within maxTokenAge.) The cache exists only on SQLite without Redis:
// with PostgreSQL the commands may run on another machine, and with Redis
// several server processes share the database.
//
// Concurrency: guarded by mu.
type tokenCache struct {
	markPath string // the revocation mark; read on every lookup
	mu       sync.Mutex
	gen      uint64 // bumped by every drop
	// byHash maps the token's SHA-256 to what its session said.
	byHash map[[sha256.Size]byte]tokenEntry
}

type tokenEntry struct {
	device  authn.Device
	expires int64 // access_expires_ts; 0: never
	readAt  time.Time
	mark    string // the revocation mark read before the session was
}

// maxTokenAge bounds how long an entry serves without a read, and so how
// late a change made by another process is seen.
const maxTokenAge = time.Second

// maxTokenEntries bounds the cache; when full it is emptied.
const maxTokenEntries = 10000

func newTokenCache(markPath string) *tokenCache {
	return &tokenCache{markPath: markPath, byHash: make(map[[sha256.Size]byte]tokenEntry)}
}

// currentMark returns the revocation mark's content ("" when there is no
// file yet, or it cannot be read: an entry read under "" then stops
// serving as soon as a command writes one).
func (c *tokenCache) currentMark() string {
	b, err := os.ReadFile(c.markPath)
	if err != nil {
		return ""
	}
	return string(b)
}

// get returns the entry of hash when there is one younger than
// maxTokenAge, read under the current revocation mark. A nil cache has
// none.
func (c *tokenCache) get(hash [sha256.Size]byte, now time.Time) (tokenEntry, bool) {
	if c == nil {
		return tokenEntry{}, false
	}
	c.mu.Lock()
	e, ok := c.byHash[hash]
	c.mu.Unlock()
	if !ok || now.Sub(e.readAt) >= maxTokenAge || now.Before(e.readAt) {
		return tokenEntry{}, false
	}
	if c.currentMark() != e.mark {
		return tokenEntry{}, false
	}
	return e, true
}

// generation is read before the session is: put keeps the entry only if
// no drop happened in between. The revocation mark is read with it and
// stored in the entry.
func (c *tokenCache) generation() (uint64, string) {
	if c == nil {
		return 0, ""
	}
	mark := c.currentMark()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen, mark
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
	switch {
	case a.tokens != nil:
		// The server process: dropping its own cache is enough (with
		// SQLite and no Redis it is the only server process), so logins
		// and logouts do not write the mark file.
		tx.AfterCommit(a.tokens.drop)
	case a.revocationMark != "":
		// Another process (the `myelin user` commands): tell the server.
		tx.AfterCommit(a.rewriteRevocationMark)
	}
}

// rewriteRevocationMark writes a fresh random value to the revocation
// mark, so that a server process sharing the database stops serving the
// tokens it cached. A failure is logged: the server then sees the change
// within maxTokenAge.
func (a *Accounts) rewriteRevocationMark() {
	var b [16]byte
	rand.Read(b[:])
	if err := os.WriteFile(a.revocationMark, []byte(hex.EncodeToString(b[:])), 0o600); err != nil {
		slog.Warn("could not rewrite the access-token revocation mark", "path", a.revocationMark, "err", err)
	}
}
