// Package pushserver is Myelin's notifications component: push rules,
// unread counts, the notification list and delivery to push gateways.
//
// Contract:
//
//   - Push rules are stored per user as their own rules plus their
//     changes to the server defaults; every change rewrites the user's
//     m.push_rules global account data (clientapi's account data stream)
//     in the same transaction, so /sync carries it. The defaults are the
//     spec v1.19 "Predefined Rules".
//   - Every new timeline event is evaluated for every local member
//     joined to its room (and a local invitee of an invite), except the
//     sender, against that user's compiled rules, inside the event's own
//     write transaction (CountInTx, the roomserver's TimelineHook; see
//     intx.go). An event whose first matching rule notifies becomes a
//     push_notifications row and, for each of the user's pushers, a
//     push_queue row, committed with the event; a local sender's own
//     event moves their read marker. So the /sync response that carries
//     an event carries the counts it raised. Outliers and backfilled
//     events are never counted. A consumer of the room event stream
//     copies push rules on room upgrade joins, and counts the events a
//     database upgraded from an older version had not counted yet.
//   - A second consumer, of clientapi's receipt stream, moves the read
//     markers (push_read) that unread counts are measured from. Counts
//     are the notification rows past the markers, kept per (user, room,
//     thread) in push_unread by every transaction that writes
//     notifications, moves markers or prunes (unread_summary.go), so a
//     read does not grow with the backlog; UnreadCounts first waits
//     (briefly) for the receipt consumer to reach the position a /sync
//     response covers.
//   - A sender drains push_queue to push gateways with exponential
//     backoff per pusher, in order per pusher, dropping pushkeys the
//     gateway rejects. It refuses gateways on non-public addresses unless
//     push.outbound_ip_allow lists them.
//
// Concurrency: one consumer goroutine and one sender goroutine per
// Server; CountInTx runs on the goroutines writing events, concurrently
// (PostgreSQL writes rooms in parallel); the API methods and HTTP
// handlers are safe for concurrent use.
// In a split deployment exactly one process may run the consumers and
// the sender; CountInTx runs in every process that writes room events.
//
// Spec: client-server-api, "Push Notifications"; push-gateway-api.
package pushserver
