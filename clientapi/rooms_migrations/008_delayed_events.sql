-- Delayed events (MSC4140): events a client asked the server to send
-- later. A row lives until the event is sent or cancelled; send_ts is
-- when it is due, running_since + delay_ms, moved by the restart action.
CREATE TABLE delayed_events (
    delay_id      TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL,
    room_id       TEXT NOT NULL,
    event_type    TEXT NOT NULL,
    -- NULL for a message event.
    state_key     TEXT,
    content       TEXT NOT NULL,
    delay_ms      BIGINT NOT NULL,
    running_since BIGINT NOT NULL,
    send_ts       BIGINT NOT NULL
);
CREATE INDEX delayed_events_due ON delayed_events (send_ts);
CREATE INDEX delayed_events_user ON delayed_events (user_id);

-- The transaction IDs of delayed message events, so a retried
-- PUT /send/{eventType}/{txnId}?delay= gets the first delay_id back,
-- also once the event has been sent. Swept after a day.
-- Spec: client-server-api, "Transaction identifiers".
CREATE TABLE delayed_event_txns (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    txn_id     TEXT NOT NULL,
    delay_id   TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);
CREATE INDEX delayed_event_txns_created ON delayed_event_txns (created_ts);
