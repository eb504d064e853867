-- roomserver_txn_ids as a WITHOUT ROWID table (SQLite). Every PUT /send
-- with a transaction ID inserts one row. As a rowid table that insert
-- wrote two B-trees: the table (keyed by a rowid nothing reads) and the
-- primary key's index, which every query of the table uses. Keyed by its
-- primary key, the table is that one B-tree: a send touches one page of
-- it instead of two and SQLite does half the B-tree work. The rows are
-- small and their key is most of them, as the SQLite documentation
-- advises for WITHOUT ROWID. PostgreSQL keeps its heap (008 there is empty).
CREATE TABLE roomserver_txn_ids_new (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id, device_id, txn_id)
) WITHOUT ROWID;
INSERT INTO roomserver_txn_ids_new (room_id, user_id, device_id, txn_id, event_id, created_ts)
    SELECT room_id, user_id, device_id, txn_id, event_id, created_ts FROM roomserver_txn_ids;
DROP TABLE roomserver_txn_ids;
ALTER TABLE roomserver_txn_ids_new RENAME TO roomserver_txn_ids;
