-- A redaction sent through PUT /rooms/{roomId}/send/m.room.redaction/{txnId}
-- (target in content.redacts) and one sent through
-- PUT /rooms/{roomId}/redact/{eventId}/{txnId} are two endpoints, so one
-- transaction ID used for both is two requests; and the path of /send
-- does not name the target, so a retry of it is a retransmission whatever
-- its content.redacts. Spec: client-server-api, "Transaction
-- identifiers" (scoped to a device and an endpoint; a retransmission has
-- the path of the first request). 014 keyed the unique index on the
-- event's redacts, which both endpoints set alike; it is now keyed on
-- txn_redacts, the event ID in the path of /redact (NULL for a send
-- through /send, and for every event without a transaction ID), which
-- lookupTxn reads with the same columns.
--
-- Which endpoint sent the redactions already stored is not known: each
-- keeps its key (txn_redacts = redacts), taken as sent through /redact
-- (a client's usual way). A retry of one of them through /send after
-- this migration makes a second redaction of the same event, which
-- changes nothing more. Rows unique before are unique still (same key).
ALTER TABLE roomserver_events ADD COLUMN txn_redacts TEXT;
UPDATE roomserver_events SET txn_redacts = redacts WHERE txn_id IS NOT NULL AND redacts IS NOT NULL AND redacts <> '';
DROP INDEX roomserver_events_txn;
CREATE UNIQUE INDEX roomserver_events_txn ON roomserver_events (txn_id, txn_device, sender, room_id, type, COALESCE(txn_redacts, ''))
    WHERE txn_id IS NOT NULL;
