-- The roomserver's tables. The events table is the room event log: its
-- event_nid is also the stream position consumers (sync, federation
-- sender) read by, allocated in the same transaction as the event.

CREATE TABLE roomserver_rooms (
    room_id TEXT PRIMARY KEY,
    room_version TEXT NOT NULL,
    -- The state snapshot of the room's current (resolved) state.
    current_snapshot BIGINT NOT NULL DEFAULT 0,
    -- JSON array of the forward extremities' event IDs.
    extremities TEXT NOT NULL DEFAULT '[]',
    -- The greatest depth among the forward extremities.
    max_depth BIGINT NOT NULL DEFAULT 0,
    created_ts BIGINT NOT NULL
);

CREATE TABLE roomserver_events (
    event_nid BIGSERIAL PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT,
    sender TEXT NOT NULL,
    -- content.membership of m.room.member events, NULL otherwise.
    membership TEXT,
    depth BIGINT NOT NULL,
    origin_server_ts BIGINT NOT NULL,
    -- The event ID this m.room.redaction targets, NULL otherwise.
    redacts TEXT,
    -- Federation-format JSON; the redacted copy once redacted.
    json TEXT NOT NULL,
    rejected BOOLEAN NOT NULL DEFAULT FALSE,
    soft_failed BOOLEAN NOT NULL DEFAULT FALSE,
    -- The accepted redaction that redacted this event, NULL if none.
    redacted_because TEXT,
    -- State snapshots before and after the event (0 for rejected events).
    state_before BIGINT NOT NULL DEFAULT 0,
    state_after BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX roomserver_events_room_topo ON roomserver_events (room_id, depth, event_nid);
CREATE INDEX roomserver_events_redacts ON roomserver_events (redacts) WHERE redacts IS NOT NULL;
CREATE INDEX roomserver_events_member ON roomserver_events (state_key, room_id) WHERE type = 'm.room.member';

-- A state snapshot is its parent's entries overridden by its own rows
-- (a delta); a snapshot with no parent holds the full state. Chains are
-- cut at a bounded length so reads stay cheap.
CREATE TABLE roomserver_snapshots (
    snapshot_nid BIGSERIAL PRIMARY KEY,
    room_id TEXT NOT NULL,
    parent_nid BIGINT,
    chain_len BIGINT NOT NULL
);

CREATE TABLE roomserver_snapshot_entries (
    snapshot_nid BIGINT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_nid BIGINT NOT NULL,
    PRIMARY KEY (snapshot_nid, type, state_key)
);

-- The current state of each room, denormalised for fast reads.
CREATE TABLE roomserver_current_state (
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_nid BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    membership TEXT,
    PRIMARY KEY (room_id, type, state_key)
);
CREATE INDEX roomserver_current_state_member ON roomserver_current_state (state_key, membership) WHERE type = 'm.room.member';

-- Client transaction IDs: a retried PUT /send with the same device and
-- txnId returns the event it created the first time.
CREATE TABLE roomserver_txn_ids (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id, device_id, txn_id)
);

-- Rooms a user has forgotten (client-server-api, "Leaving rooms").
CREATE TABLE roomserver_forgotten (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    PRIMARY KEY (user_id, room_id)
);
