-- The full-text search index of room events (SQLite). One row per
-- searchable event, filled by the search indexer from the room event
-- stream; a redaction removes its target's row. stream_pos is both the
-- event's room stream position and the docid of its room_search_fts row.
--
-- FTS4, not FTS5: mattn/go-sqlite3 compiles FTS3/FTS4 in by default but
-- FTS5 only with the sqlite_fts5 build tag, and a server that refuses to
-- start when built without a tag is worse than ranking in Go (BM25 from
-- matchinfo, see search_store.go).
-- Spec: client-server-api, "Server Side Search".
CREATE TABLE room_search_events (
    stream_pos INTEGER PRIMARY KEY,
    event_id   TEXT NOT NULL UNIQUE,
    room_id    TEXT NOT NULL,
    sender     TEXT NOT NULL,
    event_type TEXT NOT NULL,
    -- search_key is content.body, content.name or content.topic.
    search_key TEXT NOT NULL
);
CREATE INDEX room_search_events_by_room ON room_search_events (room_id, stream_pos);

CREATE VIRTUAL TABLE room_search_fts USING fts4 (body, tokenize=unicode61);
