-- One row, locked (UPDATE) by every transaction that considers keeping a
-- pushed PDU in federation_pending_pdus, before it counts the rows kept
-- per origin, per room and in total (gap_pending.go, keepPending). On
-- PostgreSQL those transactions otherwise run concurrently, each counting
-- without the rows the others are adding, and the bounds could be passed
-- by a few rows; the lock serialises them, and each count, read after it
-- (READ COMMITTED: a snapshot per statement), sees every row committed
-- before. SQLite has one writer, so there the lock costs nothing.
-- checks counts the transactions that took it.
CREATE TABLE federation_pending_guard (
    id INTEGER NOT NULL PRIMARY KEY,
    checks BIGINT NOT NULL
);
INSERT INTO federation_pending_guard (id, checks) VALUES (1, 0);
