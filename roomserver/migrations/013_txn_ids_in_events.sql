-- A send's client transaction ID moves from roomserver_txn_ids into its
-- event's row (txn_device, txn_id: NULL for every event not sent with
-- one), and roomserver_txn_ids goes.
--
-- Every PUT /send wrote a row of roomserver_txn_ids keyed by room first:
-- one leaf of that B-tree per room in each group commit, and its rows
-- (~166 bytes: room, user, device and transaction IDs, the event ID, a
-- time nothing read) filled those leaves so fast that they were split
-- and rebalanced every ~20 sends of a room, three to five pages written
-- each time. It was ~15 of the ~54 WAL frames of a commit of 8 senders'
-- messages in their own rooms (docs/benchmarks.md, "pages"). Now the
-- transaction ID is ~40 bytes more of the event row, written anyway, and
-- a retry is found through a partial unique index led by the transaction
-- ID: clients commonly make their IDs from a clock or a counter
-- (matrix-js-sdk's m<ms>.<n>, the bench tool's bench-<ns>-<n>), so the
-- new entries of a commit go side by side at one end of the index
-- instead of one leaf per room; random IDs cost a leaf each, about what
-- the old table cost.
-- Sync reads the ID from the event row it has already found, instead of
-- scanning every transaction of the device in the room.
--
-- The unique index is what refuses a retry (the send's INSERT fails and
-- its savepoint rolls everything of it back), as roomserver_txn_ids'
-- primary key did. Spec: client-server-api, "Transaction identifiers".
ALTER TABLE roomserver_events ADD COLUMN txn_device TEXT;
ALTER TABLE roomserver_events ADD COLUMN txn_id TEXT;
UPDATE roomserver_events SET txn_device = t.device_id, txn_id = t.txn_id
    FROM roomserver_txn_ids t
    WHERE t.event_id = roomserver_events.event_id;
CREATE UNIQUE INDEX roomserver_events_txn ON roomserver_events (txn_id, txn_device, sender, room_id)
    WHERE txn_id IS NOT NULL;
DROP TABLE roomserver_txn_ids;
