package clientapi

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/storage"
)

// tokenCache remembers access tokens that VerifyAccessToken found valid,
// so that a client sending requests costs one session read per token per
// maxTokenAge instead of one per request (a read on SQLite under writes
// re-reads its pages: it was a tenth of a message send's CPU, and 8 % of
// a woken /sync response's). A hit costs a map lookup and the two system
// calls that check the revocation mark (revocationmark_unix.go).
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
// sessions straight in the database while the server runs. They write the
// revocation mark — a file beside the SQLite database — twice: inside the
// transaction, before it commits, a "pending" value, and after it ends
// (committed or not) a fresh random value, before the command reports
// success. The server reads the mark before reading a session and keeps
// it with the entry; a hit is served only while the file still holds that
// value, and nothing read under a pending mark is kept. So:
//   - an entry read before the command wrote its pending mark stops
//     serving as soon as that is written;
//   - an entry read while the command runs is never kept;
//   - an entry kept under the final value was read after the commit.
//
// Hence once a command has said "revoked", the next request reads the
// session table, and a command killed at any point leaves no stale entry
// (a command killed between the two writes leaves the pending mark: the
// server then reads the session on every request, as without a cache,
// until the next `myelin user` passwd or deactivate ends). What remains
// bounded only by maxTokenAge is a change no Accounts code made (a manual
// SQL statement), and two overlapping commands where the one committing
// second is killed after its commit, before its final write (the other's
// final write may have replaced its pending mark). The cache exists only on SQLite
// without Redis: with PostgreSQL the commands may run on another machine,
// and with Redis several server processes share the database.
//
// A pending mark left by a killed command turns the cache off without a
// sound, so it is logged (warn): at start, and when a pending mark seen
// while serving is still there pendingWarnAfter later (a command that
// runs normally replaces it within its transaction's time), once per
// pending value; its replacement is logged at info.
//
// Concurrency: guarded by mu.
type tokenCache struct {
	mark   *markFile    // the revocation mark; immutable
	maxAge atomic.Int64 // maxTokenAge in nanoseconds (tests shorten it)
	log    *slog.Logger // immutable
	// pendingWarnAfter is how long a pending mark must stay before it
	// is logged as left by a killed command (immutable; tests set 0).
	pendingWarnAfter time.Duration
	mu               sync.Mutex
	gen              uint64 // bumped by every drop
	// byHash maps the token's SHA-256 to what its session said.
	byHash map[[sha256.Size]byte]tokenEntry
	// pending is the pending mark last seen ("" if the last mark read
	// was not pending), pendingSince when it was first seen, and
	// pendingLogged whether it was logged; all three guarded by mu.
	pending       string
	pendingSince  time.Time
	pendingLogged bool
}

type tokenEntry struct {
	device  authn.Device
	expires int64 // access_expires_ts; 0: never
	readAt  time.Time
	mark    string // the revocation mark read before the session was
}

// maxTokenAge bounds how long an entry serves without a read: how late a
// change made by no Accounts code is seen (see above). Long enough that a
// client polling every 30 s reads its session once in ten requests.
const maxTokenAge = 5 * time.Minute

// maxTokenEntries bounds the cache; when full, entries older than
// maxTokenAge go, and if that is not enough it is emptied.
const maxTokenEntries = 10000

// maxMarkLen bounds the revocation mark's content; a longer file is
// treated as unreadable (nothing is served or kept).
const maxMarkLen = 127

// pendingMarkPrefix starts the mark a command writes before its commit.
const pendingMarkPrefix = "pending-"

// pendingWarnAfter: see tokenCache.pendingWarnAfter. A `myelin user`
// command holds its pending mark for one transaction (milliseconds).
const pendingWarnAfter = 30 * time.Second

// newTokenCache opens the revocation mark at markPath (creating it if
// there is none). A pending mark found there is logged at once.
func newTokenCache(markPath string, log *slog.Logger) (*tokenCache, error) {
	mark, err := openMarkFile(markPath)
	if err != nil {
		return nil, err
	}
	c := &tokenCache{mark: mark, log: log, pendingWarnAfter: pendingWarnAfter, byHash: make(map[[sha256.Size]byte]tokenEntry)}
	c.maxAge.Store(int64(maxTokenAge))
	var buf [maxMarkLen + 1]byte
	if n := mark.read(buf[:]); n >= 0 && strings.HasPrefix(string(buf[:n]), pendingMarkPrefix) {
		c.pending, c.pendingSince, c.pendingLogged = string(buf[:n]), time.Now(), true
		c.warnPending()
	}
	return c, nil
}

// warnPending logs that the revocation mark is pending, and what the
// administrator should do about it.
func (c *tokenCache) warnPending() {
	c.log.Warn("the access-token revocation mark is pending: a `myelin user` passwd or deactivate command "+
		"was stopped before it ended, or is running now; until the mark is replaced the token cache is off "+
		"(every request reads its session). If no such command is running, run the stopped command again "+
		"(its end replaces the mark) or delete the mark file",
		"path", c.mark.path)
}

// sawMark notes the mark generation read: a pending mark is logged once
// it has stayed pendingWarnAfter, and the end of a logged one at info.
func (c *tokenCache) sawMark(mark string, pending bool, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case pending && mark != c.pending:
		c.pending, c.pendingSince, c.pendingLogged = mark, now, false
	case !pending && c.pending != "":
		if c.pendingLogged {
			c.log.Info("the access-token revocation mark is no longer pending: tokens are cached again", "path", c.mark.path)
		}
		c.pending, c.pendingLogged = "", false
		return
	}
	if pending && !c.pendingLogged && now.Sub(c.pendingSince) >= c.pendingWarnAfter {
		c.pendingLogged = true
		c.warnPending()
	}
}

// get returns the entry of hash when there is one younger than maxAge,
// read under the current revocation mark. A nil cache has none.
func (c *tokenCache) get(hash [sha256.Size]byte, now time.Time) (tokenEntry, bool) {
	if c == nil {
		return tokenEntry{}, false
	}
	c.mu.Lock()
	e, ok := c.byHash[hash]
	c.mu.Unlock()
	if !ok || now.Sub(e.readAt) >= time.Duration(c.maxAge.Load()) || now.Before(e.readAt) {
		return tokenEntry{}, false
	}
	var buf [maxMarkLen + 1]byte
	n := c.mark.read(buf[:])
	if n < 0 || string(buf[:n]) != e.mark {
		return tokenEntry{}, false
	}
	return e, true
}

// generation is read before the session is: put keeps the entry only if
// no drop happened in between. The revocation mark is read with it and
// stored in the entry; keep is false when nothing read now may be kept
// (no cache, the mark unreadable or pending).
func (c *tokenCache) generation() (gen uint64, mark string, keep bool) {
	if c == nil {
		return 0, "", false
	}
	var buf [maxMarkLen + 1]byte
	n := c.mark.read(buf[:])
	if n < 0 {
		return 0, "", false
	}
	if strings.HasPrefix(string(buf[:n]), pendingMarkPrefix) {
		c.sawMark(string(buf[:n]), true, time.Now())
		return 0, "", false
	}
	mark = string(buf[:n])
	c.mu.Lock()
	gen, wasPending := c.gen, c.pending != ""
	c.mu.Unlock()
	if wasPending {
		c.sawMark(mark, false, time.Now())
	}
	return gen, mark, true
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
		maxAge := time.Duration(c.maxAge.Load())
		for h, old := range c.byHash {
			if e.readAt.Sub(old.readAt) >= maxAge || e.readAt.Before(old.readAt) {
				delete(c.byHash, h)
			}
		}
		if len(c.byHash) >= maxTokenEntries {
			clear(c.byHash)
		}
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
// request is answered). In another process it marks the revocation
// pending first; an error (the mark could not be written) must roll the
// transaction back, since the server would not see the change.
func (a *Accounts) sessionsChanged(tx storage.Tx) error {
	switch {
	case a.tokens != nil:
		// The server process: dropping its own cache is enough (with
		// SQLite and no Redis it is the only server process), so logins
		// and logouts do not write the mark file.
		tx.AfterCommit(a.tokens.drop)
	case a.revocationMark != "":
		// Another process (the `myelin user` commands): tell the server,
		// before the commit and after it.
		if err := a.writeRevocationMark(pendingMarkPrefix); err != nil {
			return fmt.Errorf("writing the access-token revocation mark: %w", err)
		}
		tx.AfterCommit(a.rewriteRevocationMark)
	}
	return nil
}

// writeSessions is db.Write for the commands' writes that may revoke
// sessions (sessionsChanged). A write that fails after its pending mark
// was written still ends with a fresh mark: nothing was revoked, but a
// mark left pending would keep the server reading sessions on every
// request.
func (a *Accounts) writeSessions(ctx context.Context, fn func(storage.Tx) error) error {
	err := a.db.Write(ctx, fn)
	if err != nil && a.tokens == nil && a.revocationMark != "" {
		a.rewriteRevocationMark()
	}
	return err
}

// rewriteRevocationMark writes a fresh random value to the revocation
// mark, so that a server process sharing the database stops serving the
// tokens it cached and caches again. A failure is logged: the mark then
// stays pending, or is left empty by a write cut short after the commit;
// either way the server keeps nothing read before the commit.
func (a *Accounts) rewriteRevocationMark() {
	if err := a.writeRevocationMark(""); err != nil {
		slog.Warn("could not rewrite the access-token revocation mark", "path", a.revocationMark, "err", err)
	}
}

// writeRevocationMark writes prefix and a fresh random value to the
// revocation mark, in place (the server holds the file open).
func (a *Accounts) writeRevocationMark(prefix string) error {
	var b [16]byte
	rand.Read(b[:])
	return os.WriteFile(a.revocationMark, []byte(prefix+hex.EncodeToString(b[:])), 0o600)
}
