-- Rooms this server joined with partial state (a send_join answered
-- with members_omitted, MSC3706): their state lacks most membership
-- events until the resync fetches the full state before the join.
-- A row here is the room's "partial state" flag; it is deleted in the
-- transaction that stores the full state.
CREATE TABLE roomserver_partial_state_rooms (
    room_id TEXT PRIMARY KEY,
    -- Our join event, whose prev_events the full state is fetched at.
    join_event_id TEXT NOT NULL,
    -- JSON array: the join server first, then send_join's servers_in_room.
    servers TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);

-- Rooms whose partial state was completed, with the stream position the
-- completion happened at: a /sync that left the room out while its state
-- was partial (one that does not lazy-load members) gets the room in full
-- when its token is older than that position.
CREATE TABLE roomserver_partial_state_done (
    room_id TEXT PRIMARY KEY,
    stream_pos BIGINT NOT NULL
);
