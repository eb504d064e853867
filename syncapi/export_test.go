package syncapi

// Waiting is the number of long-polling requests registered with the
// waker, so tests can act once a request is waiting.
func (s *Server) Waiting() int {
	s.waker.mu.Lock()
	defer s.waker.mu.Unlock()
	return len(s.waker.all)
}
