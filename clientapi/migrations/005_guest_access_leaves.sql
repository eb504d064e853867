-- Rooms whose m.room.guest_access changed and whose local guests the
-- server has still to check: a guest joined to a room whose guest_access
-- is no longer can_join is made to leave. The roomserver adds (or bumps)
-- the row in the transaction that changes the room's current
-- guest_access (an event, a redaction, a state reset); a server process
-- makes the guests leave, then deletes the row if its generation is
-- still the one it read (a change meanwhile keeps it queued). A row left
-- by a crash or a failed leave is taken up again at the next start or
-- poll. Spec: client-server-api, "Guest Access", "Server behaviour".
CREATE TABLE guest_access_leaves (
    room_id TEXT PRIMARY KEY,
    generation BIGINT NOT NULL
);
