package keyserver

import (
	"context"
	"time"
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
