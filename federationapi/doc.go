// Package federationapi serves the server-server API (/_matrix/federation/*)
// and the server key API (/_matrix/key/*), and sends to other servers.
//
// So far it publishes this server's signing key (GET /_matrix/key/v2/server).
//
// Concurrency: a Server is safe for concurrent use; it holds only
// immutable configuration.
package federationapi
