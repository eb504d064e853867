package clientapi

// ForgetSyncedPresence empties the cache that spares syncs with an
// unchanged set_presence a database read, as if presenceRefresh passed.
func (s *Server) ForgetSyncedPresence() { s.rooms.presenceSeen = newPresenceCache() }
