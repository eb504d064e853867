-- Server notices: each user's server notices room.
-- Spec: client-server-api, "Server Notices": "Servers should manage
-- exactly 1 server notices room per user."
CREATE TABLE server_notice_rooms (
    user_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL UNIQUE
);
