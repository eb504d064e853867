-- Recent events of one room in stream order (sync's timelines and
-- latest positions) without scanning other rooms' events.
CREATE INDEX roomserver_events_room_stream ON roomserver_events (room_id, event_nid);
