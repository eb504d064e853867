package keyserver

import (
	"context"
	"io/fs"
	"strconv"
	"testing/fstest"
	"time"

	"github.com/myelin-chat/myelin/storage"
)

// SetClock makes s stamp keyserver_remote_users.updated_ts with
// nowMillis instead of the wall clock (a frozen clock stands for events
// that fall within one millisecond).
func SetClock(s *Server, nowMillis func() int64) { s.nowMillis = nowMillis }

// Resyncing reports whether a resync of userID's devices is under way.
func Resyncing(s *Server, userID string) bool {
	s.resyncMu.Lock()
	defer s.resyncMu.Unlock()
	_, ok := s.resyncing[userID]
	return ok
}

// ResyncShared runs s.resyncShared (a resync unless one is running or
// the cache is fresh) and waits for it.
func ResyncShared(ctx context.Context, s *Server, userID string) error {
	return s.resyncShared(ctx, userID)
}

// SetResyncBackoff sets the wait before a background resync's first
// retry, the cap of the doubling waits, and the number of attempts.
func SetResyncBackoff(s *Server, first, max time.Duration, attempts int) {
	s.resyncMu.Lock()
	defer s.resyncMu.Unlock()
	s.retry = resyncRetry{first: first, max: max, attempts: attempts}
}

// Tracking reports whether a background resync loop of userID runs
// (resyncing, or waiting to retry).
func Tracking(s *Server, userID string) bool {
	s.resyncMu.Lock()
	defer s.resyncMu.Unlock()
	_, ok := s.tracking[userID]
	return ok
}

// MigrateTo applies the key server's migrations up to version only, as
// an older binary did.
func MigrateTo(ctx context.Context, db *storage.DB, version int) error {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return err
	}
	entries, err := fs.ReadDir(sub, ".")
	if err != nil {
		return err
	}
	older := fstest.MapFS{}
	for _, e := range entries {
		if n, err := strconv.Atoi(e.Name()[:3]); err != nil || n > version {
			continue
		}
		data, err := fs.ReadFile(sub, e.Name())
		if err != nil {
			return err
		}
		older[e.Name()] = &fstest.MapFile{Data: data}
	}
	return db.Migrate(ctx, "keyserver", older)
}
