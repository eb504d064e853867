-- Key-count changes of the devices of users an application service
-- watches (MSC3202: device_one_time_keys_count and
-- device_unused_fallback_key_types in its transactions). One row per
-- device, holding the position of its latest change: an upload of
-- one-time or fallback keys, or a claim of one. Positions come from
-- keyserver_stream_heads' 'key_counts' row, raised in the transaction
-- that changes the keys (its row lock orders the commits), so a reader
-- that read up to a position has seen every change below it. The table
-- holds at most one row per watched device; a deleted device's row goes
-- with its keys.
CREATE TABLE keyserver_key_count_changes (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    position  BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);
CREATE INDEX keyserver_key_count_changes_position ON keyserver_key_count_changes (position);
INSERT INTO keyserver_stream_heads (stream, position) VALUES ('key_counts', 0);
