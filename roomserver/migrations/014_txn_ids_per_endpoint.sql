-- A transaction ID is scoped to its device and its HTTP endpoint: a
-- request is a retransmission only when its path is that of the first,
-- so PUT /rooms/{roomId}/send/{eventType}/{txnId} with another event
-- type, and PUT /rooms/{roomId}/redact/{eventId}/{txnId} (with any event
-- ID), are new requests even with a transaction ID already used in the
-- room. Spec: client-server-api, "Transaction identifiers". The path's
-- parts beside the room are the event's type and, for a redaction, its
-- target (redacts; '' for every other event, as NULLs would never
-- collide in a unique index): both join the unique index that refuses
-- a retry (013), which lookupTxn reads with the same columns. Rows
-- unique before are unique still.
DROP INDEX roomserver_events_txn;
CREATE UNIQUE INDEX roomserver_events_txn ON roomserver_events (txn_id, txn_device, sender, room_id, type, COALESCE(redacts, ''))
    WHERE txn_id IS NOT NULL;
