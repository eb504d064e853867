// Package clientapi serves the client-server API (/_matrix/client/*)
// except sync, keys and media: discovery (/versions, .well-known,
// capabilities), accounts, registration and login, devices, profiles,
// account data and filters, and (through the roomserver) room commands.
//
// clientapi owns accounts, devices and access tokens; it implements
// authn.Verifier for every other component. It never reads another
// component's tables.
//
// Concurrency: a Server is safe for concurrent use; all state is in the
// database (UIA sessions included, so a flow survives a restart), plus
// in-memory rate-limit buckets guarded by their own mutex. New starts one
// background goroutine that forgets last-seen IPs after ip_retention and
// deletes expired UIA sessions, login tokens and nonces; Close stops it.
//
// Accounts (OpenAccounts) is the same account store without HTTP or
// background work; the admin commands use it.
package clientapi
