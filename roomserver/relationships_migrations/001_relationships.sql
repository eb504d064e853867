-- MSC2836 threading: the m.relationship of every stored event that has
-- one ({"rel_type", "event_id"} in its content), written in the
-- transaction that stores the event, so a thread can be walked from a
-- parent to its children as well as upwards. parent_id may name an event
-- this server does not have (yet).
CREATE TABLE roomserver_relationships (
    event_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    parent_id TEXT NOT NULL,
    rel_type TEXT NOT NULL,
    origin_server_ts BIGINT NOT NULL
);
CREATE INDEX roomserver_relationships_by_parent ON roomserver_relationships (parent_id, origin_server_ts);

-- The most children another server reported for an event (its
-- unsigned.children and unsigned.children_hash in an
-- /event_relationships answer), and what those figures were when this
-- server last asked other servers about the event's children.
CREATE TABLE roomserver_relationship_children (
    event_id TEXT PRIMARY KEY,
    -- JSON object: rel_type -> number of children.
    children TEXT NOT NULL,
    total BIGINT NOT NULL,
    children_hash TEXT NOT NULL,
    explored_total BIGINT NOT NULL DEFAULT -1,
    explored_hash TEXT NOT NULL DEFAULT ''
);

-- One row once the events stored before this table existed were indexed.
CREATE TABLE roomserver_relationships_backfilled (
    done BOOLEAN NOT NULL
);
