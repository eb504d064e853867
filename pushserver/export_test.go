package pushserver

// LocalJoins is the count of committed local joins the consumer spaces
// its passes by (Server.localJoins).
func LocalJoins(s *Server) int64 { return s.localJoins.Load() }
