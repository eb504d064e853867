-- Federation of keys. Spec: server-server-api, "Device Management" and
-- "End-to-End Encryption".

-- Which device a local change concerns: '' for cross-signing keys and
-- signatures (sent as m.signing_key_update), else the device (sent as
-- m.device_list_update). Rows about remote users keep ''.
ALTER TABLE keyserver_device_list_changes ADD COLUMN device_id TEXT NOT NULL DEFAULT '';

-- How far the device-list stream has been handed to the federation
-- sender. Changes before this migration are history nobody waits for.
INSERT INTO keyserver_stream_heads (stream, position)
    SELECT 'federation_device_lists', COALESCE(MAX(position), 0) FROM keyserver_device_list_changes;

-- The cache of remote users' keys, kept for users who share a room with
-- a local user. stream_id is the last device-list stream ID of theirs
-- we applied; stale is set when an update could not be applied (an
-- unknown prev_id, a signing-key update) until a resync via
-- /user/devices replaces the cache.
CREATE TABLE keyserver_remote_users (
    user_id    TEXT PRIMARY KEY,
    stream_id  BIGINT NOT NULL,
    stale      BOOLEAN NOT NULL,
    updated_ts BIGINT NOT NULL
);

-- A remote device's keys as its server served them (signatures and
-- unsigned.device_display_name included).
CREATE TABLE keyserver_remote_device_keys (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    key_json  TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- A remote user's master and self-signing keys as served.
CREATE TABLE keyserver_remote_cross_signing_keys (
    user_id  TEXT NOT NULL,
    key_type TEXT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, key_type)
);
