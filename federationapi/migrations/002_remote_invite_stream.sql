-- Remote invites as a stream that /sync reads by position: each invite
-- received (or received again) takes the next position, written in the
-- same transaction as the invite.
CREATE TABLE federation_remote_invite_positions (
    stream_pos BIGSERIAL PRIMARY KEY,
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL
);

ALTER TABLE federation_remote_invites ADD COLUMN stream_pos BIGINT NOT NULL DEFAULT 0;
