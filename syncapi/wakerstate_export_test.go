package syncapi

import "github.com/myelin-chat/myelin/roomserver"

// WakerCaughtUp reports whether the waker has dispatched every room
// stream and unread counts position the notifier holds, so a long poll
// registered now is woken by nothing that came before.
func (s *Server) WakerCaughtUp() bool {
	pos := s.waker.n.Positions()
	s.waker.mu.Lock()
	defer s.waker.mu.Unlock()
	return s.waker.roomDone >= pos[roomserver.Stream] && s.waker.countsDone >= pos[UnreadCountsStream]
}

// Parked is the number of /sync long polls waiting for a wake-up (not
// computing a response).
func (s *Server) Parked() int {
	s.waker.mu.Lock()
	defer s.waker.mu.Unlock()
	n := 0
	for wt := range s.waker.all {
		if wt.parked.Load() {
			n++
		}
	}
	return n
}
