-- Stretches of a room's events stored with partial state that no resync
-- will complete (partial_state_purge.go): the partial-state record was
-- purged (every local user left before the resync completed), or a
-- rejoin ended that partial-state join without a replay of its events.
-- GET /state and /state_ids at them are refused, as while the room was
-- partial. A stretch starts at the partial-state join; after a purge it
-- stays open (through_nid NULL: every event stored meanwhile is computed
-- from the partial state) until a later join imports the room's state
-- again, which closes it at the last event stored before that join.
CREATE TABLE roomserver_partial_state_left (
    room_id TEXT NOT NULL,
    from_nid BIGINT NOT NULL,
    through_nid BIGINT,
    -- JSON array: the purged record's servers (send_join's
    -- servers_in_room). While the stretch is open the room's current
    -- state is the partial one, which lacks their members: they keep
    -- reading the room's events as before the purge.
    servers TEXT NOT NULL,
    PRIMARY KEY (room_id, from_nid)
);
