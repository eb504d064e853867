-- The key server's tables: device keys, one-time and fallback keys,
-- cross-signing keys and every signature on them, the device-list change
-- stream, to-device messages and server-side key backups. Only public keys
-- and client-encrypted data are stored; the server never holds a private
-- key or a plaintext message.
-- Spec: client-server-api, "End-to-End Encryption" and "Send-to-Device messaging".

-- A device's identity keys as the device signed them, with "signatures"
-- and "unsigned" removed (signatures live in keyserver_signatures).
-- ed25519_key and curve25519_key are copied out so a re-upload that tries
-- to change a device's identity can be refused.
CREATE TABLE keyserver_device_keys (
    user_id        TEXT NOT NULL,
    device_id      TEXT NOT NULL,
    key_json       TEXT NOT NULL,
    ed25519_key    TEXT NOT NULL,
    curve25519_key TEXT NOT NULL DEFAULT '',
    updated_ts     BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- Unclaimed one-time keys. A claim deletes the row it hands out, in the
-- same statement that picks it, so a key is given out at most once.
-- key_json is the key as uploaded (a JSON string for unsigned algorithms,
-- a signed object for signed_curve25519).
CREATE TABLE keyserver_one_time_keys (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    algorithm  TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    key_json   TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, algorithm, key_id)
);

-- At most one fallback key per device and algorithm. used is set when a
-- claim hands it out (it is not deleted) and cleared by a new upload.
CREATE TABLE keyserver_fallback_keys (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    algorithm  TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    key_json   TEXT NOT NULL,
    used       BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (user_id, device_id, algorithm)
);

-- A user's cross-signing keys (key_type: master, self_signing,
-- user_signing), without signatures. public_key is the unpadded base64
-- ed25519 key, which is also the key's "device ID" for verification.
CREATE TABLE keyserver_cross_signing_keys (
    user_id    TEXT NOT NULL,
    key_type   TEXT NOT NULL,
    public_key TEXT NOT NULL,
    key_json   TEXT NOT NULL,
    updated_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, key_type)
);

-- Every verified signature on a device key or cross-signing key: the
-- device's self-signature, the self-signing key's signature of a device,
-- the master key's of the self- and user-signing keys, a device's of the
-- master key, and another user's user-signing key's of a master key.
-- target_key_id is a device ID or a cross-signing public key;
-- signer_key_id is "ed25519:<device ID or public key>".
CREATE TABLE keyserver_signatures (
    target_user_id TEXT NOT NULL,
    target_key_id  TEXT NOT NULL,
    signer_user_id TEXT NOT NULL,
    signer_key_id  TEXT NOT NULL,
    signature      TEXT NOT NULL,
    PRIMARY KEY (target_user_id, target_key_id, signer_user_id, signer_key_id)
);
CREATE INDEX keyserver_signatures_signer ON keyserver_signatures (signer_user_id, signer_key_id);

-- The device-list stream: user_id's devices, device keys or cross-signing
-- keys changed at position. Written in the same transaction as the change.
CREATE TABLE keyserver_device_list_changes (
    position   BIGSERIAL PRIMARY KEY,
    user_id    TEXT NOT NULL,
    changed_ts BIGINT NOT NULL
);
CREATE INDEX keyserver_device_list_changes_user ON keyserver_device_list_changes (user_id, position);

-- The to-device stream: one row per message per recipient device, kept
-- until the recipient's sync acknowledges a position at or past it.
-- content is the sender's JSON object, stored as sent (for encrypted
-- messages, Olm ciphertext).
CREATE TABLE keyserver_to_device (
    position   BIGSERIAL PRIMARY KEY,
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    sender     TEXT NOT NULL,
    event_type TEXT NOT NULL,
    content    TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);
CREATE INDEX keyserver_to_device_inbox ON keyserver_to_device (user_id, device_id, position);

-- Transaction IDs of /sendToDevice requests, per sending device, so a
-- retried request is not delivered twice, also across restarts.
CREATE TABLE keyserver_to_device_txns (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    txn_id     TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);

-- To-device messages for users on other servers, waiting for the
-- federation sender (one m.direct_to_device EDU per row). messages is
-- {user_id: {device_id or "*": content}}.
CREATE TABLE keyserver_to_device_outbound (
    position    BIGSERIAL PRIMARY KEY,
    destination TEXT NOT NULL,
    sender      TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    messages    TEXT NOT NULL,
    created_ts  BIGINT NOT NULL
);
CREATE INDEX keyserver_to_device_outbound_dest ON keyserver_to_device_outbound (destination, position);

-- Server-side key backup versions. A deleted version keeps its row
-- (deleted = TRUE, its keys gone) so its number is never reused. etag
-- increases on every change to the version's keys.
-- Spec: client-server-api, "Server-side key backups".
CREATE TABLE keyserver_backup_versions (
    user_id    TEXT NOT NULL,
    version    BIGINT NOT NULL,
    algorithm  TEXT NOT NULL,
    auth_data  TEXT NOT NULL,
    etag       BIGINT NOT NULL DEFAULT 0,
    deleted    BOOLEAN NOT NULL DEFAULT FALSE,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, version)
);

-- Backed-up session keys; session_data is encrypted by the client.
CREATE TABLE keyserver_backup_keys (
    user_id             TEXT NOT NULL,
    version             BIGINT NOT NULL,
    room_id             TEXT NOT NULL,
    session_id          TEXT NOT NULL,
    first_message_index BIGINT NOT NULL,
    forwarded_count     BIGINT NOT NULL,
    is_verified         BOOLEAN NOT NULL,
    session_data        TEXT NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
);
