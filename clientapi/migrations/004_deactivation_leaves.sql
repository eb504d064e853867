-- Deactivated accounts whose rooms the server has still to leave. The
-- deactivation (POST /account/deactivate or `myelin user deactivate`,
-- which may run in another process) adds the row in its own transaction;
-- a server process leaves every room the user is joined to, invited to
-- or knocking on, as the user's own /leave would, then deletes the row.
-- A row left by a crash or a failed leave is taken up again at the next
-- start or poll.
CREATE TABLE deactivation_leaves (
    localpart TEXT PRIMARY KEY REFERENCES accounts (localpart),
    queued_ts BIGINT NOT NULL
);
