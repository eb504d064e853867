package syncapi

import "net/http"

type slidingConns struct{}

func newSlidingConns(int) *slidingConns { return &slidingConns{} }

func (s *Server) slidingSync(w http.ResponseWriter, r *http.Request) error { return nil }
