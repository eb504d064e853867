-- The joined members of a room by server name (the part of the user ID
-- after its first colon), so that whether a server has a joined member
-- in a room (the room's policy server, for each of its events) is one
-- index probe instead of a scan of the room's members. The query must
-- spell the expression exactly so (serverJoined); PostgreSQL's twin uses
-- strpos for instr.
CREATE INDEX roomserver_current_state_member_server ON roomserver_current_state
    (room_id, substr(state_key, instr(state_key, ':') + 1))
    WHERE type = 'm.room.member' AND membership = 'join';
