-- Accounts, devices and their tokens. Tokens are stored only as SHA-256
-- hashes: a database leak does not leak sessions.

CREATE TABLE accounts (
    localpart     TEXT PRIMARY KEY,
    -- bcrypt hash; '' means the account has no password (guests, erased).
    password_hash TEXT NOT NULL DEFAULT '',
    created_ts    BIGINT NOT NULL,
    is_guest      BOOLEAN NOT NULL DEFAULT FALSE,
    is_admin      BOOLEAN NOT NULL DEFAULT FALSE,
    -- A deactivated account keeps its row so its user ID is never reused.
    deactivated   BOOLEAN NOT NULL DEFAULT FALSE,
    erased        BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE devices (
    localpart      TEXT NOT NULL REFERENCES accounts (localpart),
    device_id      TEXT NOT NULL,
    display_name   TEXT,
    created_ts     BIGINT NOT NULL,
    last_seen_ts   BIGINT NOT NULL DEFAULT 0,
    -- Cleared by the retention sweep once older than client_api.ip_retention.
    last_seen_ip   TEXT,
    last_seen_user_agent TEXT,
    PRIMARY KEY (localpart, device_id)
);
CREATE INDEX devices_last_seen ON devices (last_seen_ts);

-- One row per login session; a device has at most one live session
-- (logging in again with the same device_id replaces it). The refresh
-- token, when present, rotates the access token.
-- Spec: client-server-api, "Refreshing access tokens": the previous
-- refresh token stays valid until the new access or refresh token is used.
CREATE TABLE sessions (
    session_id          BIGSERIAL PRIMARY KEY,
    localpart           TEXT NOT NULL,
    device_id           TEXT NOT NULL,
    access_token_hash   BYTEA NOT NULL UNIQUE,
    access_expires_ts   BIGINT NOT NULL DEFAULT 0,
    refresh_token_hash  BYTEA UNIQUE,
    prev_refresh_token_hash BYTEA UNIQUE,
    created_ts          BIGINT NOT NULL,
    UNIQUE (localpart, device_id),
    FOREIGN KEY (localpart, device_id) REFERENCES devices (localpart, device_id) ON DELETE CASCADE
);

-- Registration tokens. Spec: client-server-api, "Token-authenticated registration".
-- pending counts UIA sessions that passed the token stage but have not
-- registered yet; uses are exhausted when pending + completed reaches uses_allowed.
CREATE TABLE registration_tokens (
    token        TEXT PRIMARY KEY,
    uses_allowed BIGINT,
    pending      BIGINT NOT NULL DEFAULT 0,
    completed    BIGINT NOT NULL DEFAULT 0,
    expiry_ts    BIGINT,
    created_ts   BIGINT NOT NULL
);

-- User-interactive authentication sessions. They live in the database so
-- a restart, or another replica behind the load balancer, can continue a
-- flow, and so a session's hold on a registration token (pending) changes
-- in the same transaction as the token's counters.
-- Spec: client-server-api, "User-Interactive Authentication API".
CREATE TABLE uia_sessions (
    session_id   TEXT PRIMARY KEY,
    -- The operation the session authorises (register, delete_devices, ...):
    -- a session completed for one operation cannot authorise another.
    purpose      TEXT NOT NULL,
    -- The authenticated user the session belongs to; '' for registration.
    localpart    TEXT NOT NULL DEFAULT '',
    -- JSON array of the stage types completed so far.
    completed    TEXT NOT NULL DEFAULT '[]',
    -- The registration token this session holds as pending, if any.
    registration_token TEXT,
    created_ts   BIGINT NOT NULL
);
CREATE INDEX uia_sessions_created ON uia_sessions (created_ts);

-- Single-use m.login.token tokens from /login/get_token.
CREATE TABLE login_tokens (
    token_hash  BYTEA PRIMARY KEY,
    localpart   TEXT NOT NULL REFERENCES accounts (localpart),
    expires_ts  BIGINT NOT NULL
);

-- Single-use nonces for shared-secret registration (/_synapse/admin/v1/register).
CREATE TABLE admin_register_nonces (
    nonce       TEXT PRIMARY KEY,
    created_ts  BIGINT NOT NULL
);
