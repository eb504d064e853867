-- Content reports from users, for server administrators to review.
-- event_id is '' for a report about a whole room.
-- Spec: client-server-api, "Reporting content".
CREATE TABLE room_reports (
    report_id   BIGSERIAL PRIMARY KEY,
    room_id     TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    reporter    TEXT NOT NULL,
    reason      TEXT NOT NULL,
    score       BIGINT,
    received_ts BIGINT NOT NULL
);
CREATE INDEX room_reports_by_room ON room_reports (room_id, received_ts);
