package keyserver

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
