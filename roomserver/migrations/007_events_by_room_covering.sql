-- A room's latest events for sync's timelines (recentRows and the batched
-- RecentEventsOfRooms) read event_nid, redacted_because, state_before and
-- state_after of the events that are neither rejected nor soft-failed.
-- With those columns in the index the query reads the index alone, not
-- each event's table row: an initial sync of 500 rooms read ~5,500 rows
-- spread over as many table pages, and read them again for the events
-- the cache lacked. The index replaces roomserver_events_room_stream,
-- whose columns it starts with, so the other queries by room and stream
-- position use it as they did that one.
CREATE INDEX roomserver_events_room_stream_covering ON roomserver_events
    (room_id, event_nid, rejected, soft_failed, state_before, state_after, redacted_because);
DROP INDEX roomserver_events_room_stream;
