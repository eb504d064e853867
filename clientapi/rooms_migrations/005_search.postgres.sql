-- The full-text search index of room events (PostgreSQL). One row per
-- searchable event, filled by the search indexer from the room event
-- stream; a redaction removes its target's row. The SQLite twin keeps
-- body in an FTS4 table instead of vector.
-- Spec: client-server-api, "Server Side Search".
CREATE TABLE room_search_events (
    stream_pos BIGINT PRIMARY KEY,
    event_id   TEXT NOT NULL UNIQUE,
    room_id    TEXT NOT NULL,
    sender     TEXT NOT NULL,
    event_type TEXT NOT NULL,
    -- search_key is content.body, content.name or content.topic.
    search_key TEXT NOT NULL,
    body       TEXT NOT NULL,
    vector     TSVECTOR NOT NULL
);
CREATE INDEX room_search_events_by_room ON room_search_events (room_id, stream_pos);
CREATE INDEX room_search_events_vector ON room_search_events USING GIN (vector);
