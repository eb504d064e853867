-- The relations index: one row per event whose content has
-- m.relates_to with a rel_type, filled by the relations indexer from the
-- room event stream. A redaction removes its target's row.
-- Spec: client-server-api, "Forming relationships between events".
CREATE TABLE room_relations (
    event_id         TEXT PRIMARY KEY,
    room_id          TEXT NOT NULL,
    relates_to       TEXT NOT NULL,
    rel_type         TEXT NOT NULL,
    event_type       TEXT NOT NULL,
    sender           TEXT NOT NULL,
    stream_pos       BIGINT NOT NULL,
    origin_server_ts BIGINT NOT NULL
);
CREATE INDEX room_relations_by_parent ON room_relations (relates_to, rel_type, stream_pos);
CREATE INDEX room_relations_threads ON room_relations (room_id, rel_type, stream_pos);

-- How far each clientapi indexer has read the room event stream; written
-- in the same transaction as the index rows, so a crash loses nothing.
CREATE TABLE room_indexer_positions (
    name     TEXT PRIMARY KEY,
    position BIGINT NOT NULL
);
