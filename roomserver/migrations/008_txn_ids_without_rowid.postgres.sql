-- SQLite turns roomserver_txn_ids into a WITHOUT ROWID table in 008
-- (see 008_txn_ids_without_rowid.sqlite.sql). PostgreSQL has no such
-- table kind (every table is a heap beside its primary key's index), so
-- here 008 changes nothing; it exists so both engines count the same
-- versions.
SELECT 1;
