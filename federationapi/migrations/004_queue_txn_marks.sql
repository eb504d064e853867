-- Each queued row names the outbound transaction it was put in (txn_id;
-- NULL while it waits for one). A transaction is exactly its marked rows:
-- a retry (or a resend after a restart) reads them again and the
-- destination's 200 deletes them, whatever the positions of rows queued
-- meanwhile. Bounding a transaction by position instead lost rows queued
-- below it while it was in flight: a join relayed for another server, a
-- newly joined server's catch-up, or a PostgreSQL EDU id whose
-- transaction committed after a higher one's. federation_destinations'
-- pending_pdu_max and pending_edu_max are no longer read.
ALTER TABLE federation_queue_pdus ADD COLUMN txn_id TEXT;
ALTER TABLE federation_queue_edus ADD COLUMN txn_id TEXT;

-- A transaction in flight when the previous binary stopped is resent as
-- it was: mark the rows it read (the first 50 PDUs and 100 EDUs up to its
-- recorded maxima).
UPDATE federation_queue_pdus SET txn_id = (
    SELECT d.txn_id FROM federation_destinations d WHERE d.server_name = federation_queue_pdus.destination)
WHERE event_nid IN (
    SELECT q.event_nid FROM federation_queue_pdus q, federation_destinations d
    WHERE q.destination = federation_queue_pdus.destination AND d.server_name = q.destination
        AND d.txn_id IS NOT NULL AND d.txn_id <> '' AND q.event_nid <= d.pending_pdu_max
    ORDER BY q.event_nid LIMIT 50);
UPDATE federation_queue_edus SET txn_id = (
    SELECT d.txn_id FROM federation_destinations d WHERE d.server_name = federation_queue_edus.destination)
WHERE edu_nid IN (
    SELECT q.edu_nid FROM federation_queue_edus q, federation_destinations d
    WHERE q.destination = federation_queue_edus.destination AND d.server_name = q.destination
        AND d.txn_id IS NOT NULL AND d.txn_id <> '' AND q.edu_nid <= d.pending_edu_max
    ORDER BY q.edu_nid LIMIT 100);
UPDATE federation_destinations SET pending_pdu_max = 0, pending_edu_max = 0;
