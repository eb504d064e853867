-- Binaries before session 23 could keep the cached device list of a
-- remote user who had stopped sharing every joined room with a local
-- user (all of them before session 22; after that, still when a state
-- reset ended the sharing): fresh, although their server no longer sent
-- their updates, and served again if they shared a room once more.
-- Newer binaries untrack such a user in the transaction that ends the
-- sharing (UntrackInTx). This row, written only when there are cached
-- lists, says those left by the older binaries are still to be checked:
-- the key server, when it starts (untrackUnshared), drops the cache of
-- every remote user who shares no joined room with a local user, then
-- this row, in its last transaction.
CREATE TABLE keyserver_untrack_sweep (
    id INTEGER NOT NULL PRIMARY KEY
);
INSERT INTO keyserver_untrack_sweep (id) SELECT 1 WHERE EXISTS (SELECT 1 FROM keyserver_remote_users);
