-- Current-state changes on the room stream (issue 7). A room's current
-- state can change without a new event of its own at that position: the
-- completion of a stretch of partial state or the end of a resync
-- resolves it again (recomputeCurrentState), and an incoming event can
-- reset it to older events (a fork). /sync tells a client the state that
-- changed since its token by the position of the change, not of the
-- entry's event.
--
-- stream_pos: the room stream position at which the entry became current
-- (its event's position when that event made it current; otherwise the
-- position of the change). StateDelta and the memberships read it.
ALTER TABLE roomserver_current_state ADD COLUMN stream_pos BIGINT NOT NULL DEFAULT 0;
UPDATE roomserver_current_state SET stream_pos = event_nid;
CREATE INDEX roomserver_current_state_room_changed ON roomserver_current_state (room_id, stream_pos);

-- The positions of changes that the room's events at that position do
-- not show: a change made without an event (its position is allocated
-- from the events' sequence, so it orders and commits with them), or one
-- that set entries to events other than the event at that position. One
-- row per changed m.room.member key (member: its state key) and one with
-- member '' per change, so that the waker, RoomsWithEvents, LatestPositions
-- and the head of the room stream see them.
CREATE TABLE roomserver_state_changes (
    stream_pos BIGINT NOT NULL,
    member TEXT NOT NULL,
    room_id TEXT NOT NULL,
    PRIMARY KEY (stream_pos, member)
);
CREATE INDEX roomserver_state_changes_room ON roomserver_state_changes (room_id, stream_pos);
