-- Events stored after a rejoin whose state derives from a stretch of
-- partial state (roomserver_partial_state_left, marked by
-- markAfterPartialStretch): the state at their prev events in a stretch
-- is to be fetched again from a server in the room, so their state can
-- be completed (partial_state_refetch.go). A row goes when the event's
-- state is complete; until then the federation API retries, at
-- next_try_ts (ms) at the earliest, with backoff.
CREATE TABLE roomserver_stretch_refetch (
    event_nid BIGINT PRIMARY KEY,
    room_id TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try_ts BIGINT NOT NULL,
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX roomserver_stretch_refetch_due ON roomserver_stretch_refetch (next_try_ts);
