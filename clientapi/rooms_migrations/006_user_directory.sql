-- The user directory, filled by the user directory indexer from the
-- m.room.member, m.room.join_rules and m.room.history_visibility events
-- of the room event stream.
-- Spec: client-server-api, "User directory".

-- One row per user seen joined to a room. For local users display_name
-- and avatar_url are their global profile; for remote users, what their
-- latest member event in a public room said (never a name they gave
-- only a private room). search_text is the lower-cased words of the
-- user ID and display name, each preceded by a space, so that
-- LIKE '% word%' is a word-prefix match on both engines.
CREATE TABLE user_directory (
    user_id      TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    avatar_url   TEXT NOT NULL,
    search_text  TEXT NOT NULL
);

-- Who is joined to which room, as the directory last saw it.
CREATE TABLE user_directory_members (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX user_directory_members_by_user ON user_directory_members (user_id, room_id);

-- Rooms whose members anyone may find: a public join rule or
-- world-readable history.
CREATE TABLE user_directory_rooms (
    room_id        TEXT PRIMARY KEY,
    public_join    BOOLEAN NOT NULL,
    world_readable BOOLEAN NOT NULL
);
