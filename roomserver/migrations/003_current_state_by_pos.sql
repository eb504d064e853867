-- Current state entries of one room by the position of their event:
-- incremental /sync asks every woken request's rooms for the state that
-- changed since its token (StateDelta), which otherwise reads the room's
-- whole current state (every member) on each wake-up.
CREATE INDEX roomserver_current_state_room_pos ON roomserver_current_state (room_id, event_nid);
