package syncapi

import "time"

// Waiting is the number of long-polling requests registered with the
// waker, so tests can act once a request is waiting.
func (s *Server) Waiting() int {
	s.waker.mu.Lock()
	defer s.waker.mu.Unlock()
	return len(s.waker.all)
}

// ZeroSharedHeads makes the shared heads cache hold all-zero heads for
// the current notification generation, as if its entry had been read
// just before every write so far: tests use it to show that a token
// ahead of the cached heads is still accepted.
func (s *Server) ZeroSharedHeads() {
	c := s.sharedHeads
	if c.n == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen, c.at, c.heads, c.seen = c.n.Changed(), time.Now(), syncToken{}, c.n.Positions()
}
