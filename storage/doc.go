// Package storage opens Myelin's database — SQLite (embedded, the default)
// or PostgreSQL — and gives every component the same small API over it:
//
//   - SQL is written once, in the subset both engines share ($1
//     placeholders, ON CONFLICT ... DO UPDATE, RETURNING). The package
//     rewrites it for SQLite. Where the engines really differ, the caller
//     holds both texts side by side and picks one with DB.Engine.
//   - Write runs a function in a write transaction. On SQLite all writes
//     go through one connection and are group-committed: the functions
//     queued while the previous commit was syncing, and those queued while
//     they run, run in one transaction, each inside its own savepoint (so
//     one failing function rolls back only its own work), and share one
//     COMMIT — one fsync. No Write returns before its commit is durable
//     (synchronous=FULL in WAL mode).
//   - Read and Reader use a pool of read connections that never block
//     the writer (WAL).
//   - Migrate applies a component's numbered .sql migrations, embedded in
//     the binary, and refuses to run on a schema newer than the binary.
//
// Tx.AfterCommit registers work (typically "tell the notifier stream S
// advanced") that runs only after the transaction has committed.
//
// Concurrency: a DB is safe for concurrent use. A Write function must not
// call Write or Read on the same DB (it would wait on itself); it uses the
// Tx it is given for every statement, including reads.
package storage
