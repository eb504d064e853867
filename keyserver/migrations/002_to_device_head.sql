-- The to-device stream's head, for sync tokens. It cannot be read from
-- keyserver_to_device: acknowledged rows are deleted, so MAX(position)
-- would go backwards, and a sequence's last value may belong to a
-- transaction that has not committed. sendToDevice raises it in the
-- transaction that inserts the rows, under the stream lock. Until this
-- migration no sync token carried a to-device position, so starting from
-- the rows still stored is safe.
CREATE TABLE keyserver_stream_heads (
    stream   TEXT PRIMARY KEY,
    position BIGINT NOT NULL
);
INSERT INTO keyserver_stream_heads (stream, position)
    SELECT 'to_device', COALESCE(MAX(position), 0) FROM keyserver_to_device;
