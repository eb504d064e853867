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
//   - A consumer of the room event stream evaluates each new event for
//     every local member joined to its room (and a local invitee of an
//     invite), except the sender, against that user's compiled rules. An
//     event whose first matching rule notifies becomes a
//     push_notifications row and, for each of the user's pushers, a
//     push_queue row — in the same transaction that advances the
//     consumer's stored position, so a crash loses and repeats nothing.
//   - A second consumer, of clientapi's receipt stream, moves the read
//     markers (push_read) that unread counts are measured from. Counts
//     are the notification rows past the markers; UnreadCounts first
//     waits (briefly) for both consumers to reach the positions a /sync
//     response covers, so an event and the count it raised arrive
//     together, as the spec requires.
//   - A sender drains push_queue to push gateways with exponential
//     backoff per pusher, in order per pusher, dropping pushkeys the
//     gateway rejects. It refuses gateways on non-public addresses unless
//     push.outbound_ip_allow lists them.
//
// Concurrency: one consumer goroutine and one sender goroutine per
// Server; the API methods and HTTP handlers are safe for concurrent use.
// In a split deployment exactly one process may run the component.
//
// Spec: client-server-api, "Push Notifications"; push-gateway-api.
package pushserver
