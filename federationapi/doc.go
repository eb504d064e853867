// Package federationapi serves the server-server API (/_matrix/federation/*)
// and the key API (/_matrix/key/*), and talks to other servers.
//
// Inbound: every /_matrix/federation request passes X-Matrix
// authentication (auth.go: origin, destination must be us, key,
// signature; else 401 M_UNAUTHORIZED) and room-scoped routes pass the
// room's server ACL. The exceptions are /version and the two endpoints
// called by others than servers: /openid/userinfo (openid.go; the OpenID
// token is the credential) and /3pid/onbind (thirdparty.go; identity
// servers, whose signatures the auth rules check). /send checks each PDU on its own (format, sizes,
// depth, the sender's server's signature, content hash → redaction) and
// hands it to roomserver.InputEvent, fetching missing prev events with
// get_missing_events; when that does not connect the PDU to what we hold,
// gap.go takes the state at the missing prev events from the origin
// (state_ids, then the events we lack) and inputs the PDU with it
// (roomserver.InputWithState). A leave or ban for a room we do not hold
// ends a local user's pending remote invite or knock. EDUs reach the EDUSinks only when the user they
// concern belongs to the origin. Transactions are deduplicated by
// (origin, txnId) in federation_inbound_txns. Reads answer for the
// requesting server's view of the room (roomserver's *ForServer reads).
//
// Outbound: client.go resolves server names as the spec says
// (discovery.go), signs requests and bounds answers; keyring.go caches
// other servers' keys with their validity and fetches them directly or
// through trusted_key_servers; sender.go is the persistent per-destination
// queue (see its doc). Joiner.JoinRemote runs make_join/send_join,
// refusing any template that changes what we asked for; KnockRemote does
// the same with make_knock/send_knock and keeps the knock (with the
// answer's stripped state) as a pending membership for /sync. Both also
// serve a second local user's join or knock while a room held here has
// partial state (join_out.go, inputOwnMembership). LeaveRemote rejects
// a pending invite or withdraws a knock with make_leave/send_leave and,
// when no server takes it, ends it with an out-of-band leave of our own
// that no other server sees (leave_local.go). Backfill
// (backfill_out.go) fetches history for the roomserver when /messages
// reaches the oldest event held. hierarchy.go serves and fetches space
// hierarchies (the summaries come from Deps.Spaces, the client API);
// invite_v1.go serves the deprecated /v1/invite and falls back to it for
// room versions 1 and 2. userkeys.go serves /user/keys/query,
// /user/keys/claim and /user/devices from the key server and makes those
// requests for it.
//
// Concurrency: a Server is safe for concurrent use. Inbound transactions
// are serialised per origin; the sender runs one goroutine for fan-out and
// one per destination with queued work.
package federationapi
