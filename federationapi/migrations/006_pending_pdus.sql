-- A PDU pushed to us (PUT /send) whose prev events we lack, and whose gap
-- no server could fill when it arrived: get_missing_events failed at its
-- origin and at the room's other servers asked (no answer, 5xx, timeout,
-- 401). The sender had its 200 for the transaction and will not send the
-- PDU again, so it is kept here and the gap is retried in the background
-- with backoff (next_try_ts, attempts) until the PDU is input, given up
-- (too many attempts, too old) or refused. The PDU passed the format,
-- signature and hash checks before it was kept, and is checked again when
-- it is retried. Rows are bounded per origin, per room and in total
-- (gap_pending.go), so a hostile server cannot fill the disk.
CREATE TABLE federation_pending_pdus (
    event_id TEXT NOT NULL PRIMARY KEY,
    room_id TEXT NOT NULL,
    origin TEXT NOT NULL,
    room_version TEXT NOT NULL,
    pdu TEXT NOT NULL,
    received_ts BIGINT NOT NULL,
    attempts INTEGER NOT NULL,
    next_try_ts BIGINT NOT NULL
);
CREATE INDEX federation_pending_pdus_room ON federation_pending_pdus (room_id);
CREATE INDEX federation_pending_pdus_origin ON federation_pending_pdus (origin);
CREATE INDEX federation_pending_pdus_next ON federation_pending_pdus (next_try_ts);
