-- Application services: per-service position in the room event stream and
-- the queue of transactions not yet acknowledged by the service.

-- The room event stream position each service's sender has consumed, and
-- the next transaction ID to hand out. Written in the same transaction as
-- the appservice_txns row built from the events up to that position.
CREATE TABLE appservice_positions (
    as_id       TEXT PRIMARY KEY,
    position    BIGINT NOT NULL,
    next_txn_id BIGINT NOT NULL
);

-- Transactions built but not yet answered with 200. A retry (also after a
-- restart) sends the same txn_id with the same body; the row is deleted
-- once the service acknowledged it.
CREATE TABLE appservice_txns (
    as_id  TEXT NOT NULL,
    txn_id BIGINT NOT NULL,
    body   TEXT NOT NULL,
    PRIMARY KEY (as_id, txn_id)
);
