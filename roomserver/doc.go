// Package roomserver owns the room DAG: it builds, signs and auth-checks
// local events, accepts federated ones, keeps state snapshots and the
// current state, resolves forked state, applies redactions and history
// visibility, and is the only writer of room events. It has no HTTP
// surface; clientapi, syncapi and federationapi call API.
//
// The database is the log: every stored event gets the next event NID,
// which is also its room-event stream position, in the same transaction
// that writes its state. Deps.Notify("room_events", pos) runs only after
// that transaction commits. Rejected events are stored (so they are not
// fetched again) but never enter state, extremities or any read;
// soft-failed events are stored with their state but are neither forward
// extremities nor timeline events.
//
// State is stored as snapshots: a snapshot is a delta (the changed
// (type, state_key) -> event rows) on a parent snapshot, chains are cut
// at a bounded length by writing a full snapshot, and events that do not
// change state share their predecessor's snapshot. Each event records the
// snapshots before and after it; roomserver_current_state mirrors the
// room's current snapshot for indexed reads, each entry with the stream
// position it became current at. A change of the current state that the
// event at its position does not show (none stored, as at a resync's end
// or a stretch completion, or entries set to older events: a state
// reset) is also a row of roomserver_state_changes; a change without an
// event takes a position of its own from the events' sequence
// (updateCurrentState), so /sync learns every change once, in order.
//
// Concurrency: all writes to one room run under that room's lock (a
// striped mutex keyed by room ID); the holder reads extremities and
// state, builds and checks the event, and commits before releasing, so
// prev_events and extremities never race. A goroutine holds at most one
// room lock. Reads take no lock. On PostgreSQL, event insertion also
// takes a transaction-scoped advisory lock so stream positions commit in
// order (as does allocating a position for a change without an event); on SQLite the single writer gives the same guarantee. In split
// mode one process must be the writer of a room (the design's Redis lock).
//
// gomatrixserverlib is used behind guard(), which turns its panics into
// errors; its room version table is used only for the stable versions
// 1–12 (supportedVersions) and the unstable owned-state versions of
// MSC3757 (auth_ownedstate.go); its logrus output is routed to slog at
// debug level. Sender IDs are resolved leniently (historical user IDs
// allowed).
package roomserver
