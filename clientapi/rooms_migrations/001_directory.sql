-- Room aliases and the published room directory.
-- Spec: client-server-api, "Room aliases" and "Published room directory".

-- Local room aliases. creator is the user who made the alias (who may
-- delete it besides room moderators).
CREATE TABLE room_aliases (
    alias      TEXT PRIMARY KEY,
    room_id    TEXT NOT NULL,
    creator    TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);
CREATE INDEX room_aliases_by_room ON room_aliases (room_id);

-- Rooms published in the directory (visibility "public").
CREATE TABLE room_directory (
    room_id      TEXT PRIMARY KEY,
    published_ts BIGINT NOT NULL
);
