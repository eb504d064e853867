// Package syncapi serves GET /_matrix/client/v3/sync and simplified
// sliding sync (MSC4186). It owns no tables: it reads every stream by
// position through the components that write them (Rooms, AccountData,
// and the optional Ephemeral and E2EE sources) and never writes.
//
// A /sync token is a vector of stream positions (see token.go), so any
// token this server issued stays valid across restarts and any replica
// can answer it. A token past a stream's head is refused with 400
// M_INVALID_PARAM, as is anything that does not parse.
//
// Long-polling: a waiting request registers its interest (its user and
// the rooms it has a membership in) with the waker before it reads, then
// sleeps. The waker listens to the notifier; when the room event stream
// advances it reads the new positions once ((position, room, member)
// rows, no JSON) and wakes only the requests interested in those rooms
// or members; other streams wake every waiter, which re-reads cheaply.
// No request polls the database while it waits.
//
// Requests woken together share what is the same for all of them and
// exact: the stream heads between notifications (heads.go, carried
// forward by room and counts notifications, off with Redis), the rooms
// with events in a committed window (newscache.go) and parsed filters
// (filtercache.go). Everything a user may or may not see — memberships,
// timeline visibility, ignored users, transaction IDs, counts — is read
// per request; a request's independent reads run concurrently
// (concurrently.go).
//
// Sliding sync keeps per-connection state (which rooms were sent, up to
// which position, with which config) in memory, keyed by user, device
// and conn_id. A pos the server no longer knows (after a restart, or
// issued to someone else) is answered with 400 M_UNKNOWN_POS, which
// tells the client to start the connection again.
//
// Concurrency: handlers run concurrently; the waker's tables are guarded
// by its mutex; each sliding connection by its own mutex.
package syncapi
