-- Binaries before session 18 kept a pending remote invite or knock
-- (federation_remote_invites) after the room came to be held here and
-- the user's own member event was committed in it: nothing ended the
-- row then but a join through send_join. Newer binaries end it in that
-- commit (EndPendingMembershipInTx). This row says the rows left by the
-- older ones are still to be cleaned: the first process to start the
-- federation API after this migration deletes those whose membership
-- really ended (pending_cleanup.go), then this row, in one transaction.
CREATE TABLE federation_pending_cleanup (
    id INTEGER NOT NULL PRIMARY KEY
);
INSERT INTO federation_pending_cleanup (id) VALUES (1);
