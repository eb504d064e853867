-- Knocks of local users on rooms only other servers hold share the
-- remote invite stream: a pending membership (invite or knock) of a local
-- user in a room this server does not hold, with the server that handled
-- it (the one knocked through; empty for invites, whose sender names it).
ALTER TABLE federation_remote_invites ADD COLUMN membership TEXT NOT NULL DEFAULT 'invite';
ALTER TABLE federation_remote_invites ADD COLUMN via_server TEXT NOT NULL DEFAULT '';
