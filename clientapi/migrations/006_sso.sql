-- Single sign-on through OpenID Connect providers (sso.go).
-- Spec: client-server-api, "SSO client login/authentication".

-- Who an upstream account is here: the provider's subject (the ID
-- token's sub, stable and never reassigned by the provider) names the
-- user, so a username changed at the provider never moves the account.
CREATE TABLE sso_users (
    idp_id      TEXT NOT NULL,
    subject     TEXT NOT NULL,
    localpart   TEXT NOT NULL REFERENCES accounts (localpart),
    created_ts  BIGINT NOT NULL,
    PRIMARY KEY (idp_id, subject)
);
CREATE INDEX sso_users_localpart ON sso_users (localpart);

-- Sign-ins under way at a provider, from /login/sso/redirect (or the
-- m.login.sso UIA fallback page, for uia_session) to the callback. The state sent to the provider is kept only as its SHA-256,
-- and the row is deleted as the callback reads it (single use). The
-- browser that started the flow is named by the SHA-256 of its cookie:
-- a callback from another browser does not match.
CREATE TABLE sso_flows (
    state_hash     BYTEA PRIMARY KEY,
    browser_hash   BYTEA NOT NULL,
    idp_id         TEXT NOT NULL,
    nonce          TEXT NOT NULL,
    code_verifier  TEXT NOT NULL,
    redirect_url   TEXT NOT NULL,
    -- The UIA session the sign-in confirms the user for; '' for a login.
    uia_session    TEXT NOT NULL DEFAULT '',
    expires_ts     BIGINT NOT NULL
);
CREATE INDEX sso_flows_expires ON sso_flows (expires_ts);

-- Sign-ins done at the provider, waiting for the user to confirm on
-- Myelin's page that the client at redirect_url may have the login (only
-- then is a login token made), or that the operation of uia_session may
-- go ahead (only then is its m.login.sso stage completed). Single use,
-- bound to the same browser.
CREATE TABLE sso_confirmations (
    confirm_hash   BYTEA PRIMARY KEY,
    browser_hash   BYTEA NOT NULL,
    localpart      TEXT NOT NULL REFERENCES accounts (localpart),
    redirect_url   TEXT NOT NULL,
    uia_session    TEXT NOT NULL DEFAULT '',
    expires_ts     BIGINT NOT NULL
);
CREATE INDEX sso_confirmations_expires ON sso_confirmations (expires_ts);
