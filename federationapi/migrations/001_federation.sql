-- federationapi's tables. The outbound queue follows "the database is
-- the log": the sender reads the roomserver's event stream from
-- federation_sender_state.fanout_pos, writes one queue row per
-- (destination, event) in the same transaction that advances it, and
-- deletes queue rows only after the destination acknowledged them.

-- Signing keys of other servers, as fetched directly or from a notary.
-- Current keys have valid_until_ts and expired_ts = 0; old keys have
-- expired_ts and valid_until_ts = 0.
CREATE TABLE federation_server_keys (
    server_name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    public_key TEXT NOT NULL,
    valid_until_ts BIGINT NOT NULL,
    expired_ts BIGINT NOT NULL,
    fetched_ts BIGINT NOT NULL,
    PRIMARY KEY (server_name, key_id)
);

-- The last self-signed key document of each server, served again by our
-- notary endpoint (with our signature added).
CREATE TABLE federation_key_documents (
    server_name TEXT PRIMARY KEY,
    document TEXT NOT NULL,
    valid_until_ts BIGINT NOT NULL
);

-- Inbound transactions already processed: a retry of (origin, txn_id)
-- gets the stored response and nothing is processed twice.
CREATE TABLE federation_inbound_txns (
    origin TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    response TEXT NOT NULL,
    received_ts BIGINT NOT NULL,
    PRIMARY KEY (origin, txn_id)
);

-- The sender's position in the roomserver event stream (one row).
CREATE TABLE federation_sender_state (
    id INTEGER PRIMARY KEY,
    fanout_pos BIGINT NOT NULL
);

-- Per destination: backoff state and the transaction in flight. A
-- transaction is recorded (txn_id, pending_pdu_max, pending_edu_max)
-- before it is sent, so a restart resends exactly it with the same ID.
CREATE TABLE federation_destinations (
    server_name TEXT PRIMARY KEY,
    failures INTEGER NOT NULL DEFAULT 0,
    retry_at_ts BIGINT NOT NULL DEFAULT 0,
    txn_seq BIGINT NOT NULL DEFAULT 0,
    txn_id TEXT,
    pending_pdu_max BIGINT NOT NULL DEFAULT 0,
    pending_edu_max BIGINT NOT NULL DEFAULT 0
);

-- PDUs waiting for a destination, by roomserver stream position.
CREATE TABLE federation_queue_pdus (
    destination TEXT NOT NULL,
    event_nid BIGINT NOT NULL,
    PRIMARY KEY (destination, event_nid)
);

-- EDUs waiting for a destination.
CREATE TABLE federation_queue_edus (
    edu_nid BIGSERIAL PRIMARY KEY,
    destination TEXT NOT NULL,
    edu TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);
CREATE INDEX federation_queue_edus_dest ON federation_queue_edus (destination, edu_nid);

-- Invites for local users to rooms this server is not in yet: the
-- signed invite event and the stripped state the inviter sent.
CREATE TABLE federation_remote_invites (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    room_version TEXT NOT NULL,
    event TEXT NOT NULL,
    invite_room_state TEXT NOT NULL,
    received_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id)
);
