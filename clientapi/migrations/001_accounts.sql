-- Accounts, devices and their tokens. Tokens are stored only as SHA-256
-- hashes: a database leak does not leak sessions.

CREATE TABLE accounts (
    localpart     TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL DEFAULT '',
    created_ts    BIGINT NOT NULL,
    is_guest      BOOLEAN NOT NULL DEFAULT FALSE,
    is_admin      BOOLEAN NOT NULL DEFAULT FALSE,
    deactivated   BOOLEAN NOT NULL DEFAULT FALSE,
    erased        BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE devices (
    localpart      TEXT NOT NULL REFERENCES accounts (localpart),
    device_id      TEXT NOT NULL,
    display_name   TEXT,
    created_ts     BIGINT NOT NULL,
    last_seen_ts   BIGINT NOT NULL DEFAULT 0,
    last_seen_ip   TEXT,
    last_seen_user_agent TEXT,
    PRIMARY KEY (localpart, device_id)
);

-- One row per login session. A device has at most one live session; the
-- refresh token, when present, rotates the access token.
CREATE TABLE sessions (
    session_id          BIGSERIAL PRIMARY KEY,
    localpart           TEXT NOT NULL,
    device_id           TEXT NOT NULL,
    access_token_hash   BYTEA NOT NULL UNIQUE,
    access_expires_ts   BIGINT NOT NULL DEFAULT 0,
    refresh_token_hash  BYTEA UNIQUE,
    created_ts          BIGINT NOT NULL,
    FOREIGN KEY (localpart, device_id) REFERENCES devices (localpart, device_id) ON DELETE CASCADE
);
CREATE INDEX sessions_by_device ON sessions (localpart, device_id);

-- Registration tokens. Spec: client-server-api, "Token-authenticated registration".
CREATE TABLE registration_tokens (
    token        TEXT PRIMARY KEY,
    uses_allowed BIGINT,
    pending      BIGINT NOT NULL DEFAULT 0,
    completed    BIGINT NOT NULL DEFAULT 0,
    expiry_ts    BIGINT,
    created_ts   BIGINT NOT NULL
);
