-- OpenID tokens from POST /user/{userId}/openid/request_token. Only their
-- SHA-256 is kept, like every other token. They are good for nothing but
-- GET /_matrix/federation/v1/openid/userinfo until expires_ts; the sweep
-- deletes expired ones.
-- Spec: client-server-api, "OpenID"; server-server-api, "OpenID".
CREATE TABLE openid_tokens (
    token_hash  BYTEA PRIMARY KEY,
    localpart   TEXT NOT NULL REFERENCES accounts (localpart),
    expires_ts  BIGINT NOT NULL
);
CREATE INDEX openid_tokens_expires ON openid_tokens (expires_ts);
