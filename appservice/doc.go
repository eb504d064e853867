// Package appservice is the Application Service API: bridges and bots
// registered by YAML files that the server reads at start.
//
// It owns three things:
//
//   - the registrations (Registry): who an as_token is, which user IDs,
//     room aliases and room IDs fall in which namespace, and which are
//     exclusive. clientapi asks the Registry when it resolves access
//     tokens, registers users and creates aliases;
//   - the transaction sender: one goroutine per application service with a
//     URL reads the room event stream from its stored position, and every
//     batch of interesting events becomes a transaction row written in the
//     same database transaction that advances the position (the database is
//     the log). A transaction is pushed with PUT
//     {url}/_matrix/app/v1/transactions/{txnId} until the service answers
//     200, with the same txnId on every retry, across restarts too. For
//     services with receive_ephemeral the transaction also carries the
//     typing, receipts and presence of interest (ephemeral.go); the
//     receipt and presence positions are stored like the event position,
//     the typing position is held in memory as typing itself is. Services
//     that also set org.matrix.msc3202 get the to-device messages of their
//     users' devices (MSC2409/MSC4203, todevice.go), from a stored
//     position, without removing them from the inboxes, and MSC3202's
//     device lists and one-time/fallback key counts (msc3202.go), from
//     stored positions in the key server's device-list and key-count
//     change streams;
//   - the homeserver-to-service queries (users, room aliases, ping), and
//     the third-party network queries (thirdparty.go): protocol metadata
//     merged from every service registered for the protocol, with an
//     instance_id per service and network ("{service id}|{network_id}",
//     which ParseInstanceID reads back for the room directory), and user
//     and location lookups whose results from every service are
//     concatenated, a failing service skipped.
//
// Each of these requests but the ping falls back to the route older drafts
// of the spec used when the service answers the /_matrix/app/v1 path with
// a status that is not a success (legacy.go).
//
// Concurrency: the Registry is immutable after Load. Server methods are
// safe for concurrent use; each sender goroutine is the only writer of its
// service's rows.
//
// Spec: application-service-api (v1.19), and client-server-api
// "Application Services" for identity assertion.
package appservice
