-- Receipts and presence are streams: each write deletes the previous row
-- for its key and inserts a new one, so position is the stream position
-- of the latest change and MAX(position) is the stream head (the same
-- pattern as account_data).

-- Read receipts. thread_id is '' for an unthreaded receipt.
-- Spec: client-server-api, "Receipts".
CREATE TABLE receipts (
    position     BIGSERIAL PRIMARY KEY,
    room_id      TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    receipt_type TEXT NOT NULL,
    thread_id    TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    ts           BIGINT NOT NULL,
    UNIQUE (room_id, user_id, receipt_type, thread_id)
);
CREATE INDEX receipts_by_room_position ON receipts (room_id, position);

-- Presence of local users. Spec: client-server-api, "Presence".
CREATE TABLE presence (
    position       BIGSERIAL PRIMARY KEY,
    user_id        TEXT NOT NULL UNIQUE,
    presence       TEXT NOT NULL,
    status_msg     TEXT,
    last_active_ts BIGINT NOT NULL
);
