-- Profiles, account data and filters.

-- profiles has one row per user who has ever written a profile field. A
-- writer upserts it first, which on PostgreSQL locks it, so the 64 KiB
-- total-size check sees a stable set of fields. A user without a row has
-- an empty profile.
-- Spec: client-server-api, "Profiles".
CREATE TABLE profiles (
    localpart  TEXT PRIMARY KEY REFERENCES accounts (localpart),
    updated_ts BIGINT NOT NULL
);

-- One row per profile field; value is the field's JSON encoding
-- (displayname, avatar_url and m.tz are JSON strings; custom fields are any
-- JSON value).
CREATE TABLE profile_fields (
    localpart TEXT NOT NULL REFERENCES profiles (localpart),
    field     TEXT NOT NULL,
    value     TEXT NOT NULL,
    PRIMARY KEY (localpart, field)
);

-- Account data is a stream: every write deletes the previous row for its
-- (user, room, type) and inserts a new one, so position is the stream
-- position of the latest change and MAX(position) is the stream head.
-- room_id is '' for global account data.
-- Spec: client-server-api, "Client Config".
CREATE TABLE account_data (
    position  BIGSERIAL PRIMARY KEY,
    localpart TEXT NOT NULL REFERENCES accounts (localpart),
    room_id   TEXT NOT NULL,
    type      TEXT NOT NULL,
    content   TEXT NOT NULL,
    UNIQUE (localpart, room_id, type)
);
CREATE INDEX account_data_by_user_position ON account_data (localpart, position);

-- Filters. filter_hash is the SHA-256 of filter_json, so a client that
-- uploads the same filter at every start gets the same ID back instead of
-- growing the table. The filter ID is filter_nid in decimal.
-- Spec: client-server-api, "Filtering".
CREATE TABLE filters (
    filter_nid  BIGSERIAL PRIMARY KEY,
    localpart   TEXT NOT NULL REFERENCES accounts (localpart),
    filter_hash BYTEA NOT NULL,
    filter_json TEXT NOT NULL,
    UNIQUE (localpart, filter_hash)
);
