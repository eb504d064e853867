-- Reports about users, for server administrators to review.
-- target_user_id is the reported user (of this server or another).
-- Spec: client-server-api, "POST /_matrix/client/v3/users/{userId}/report".
CREATE TABLE user_reports (
    report_id      BIGSERIAL PRIMARY KEY,
    target_user_id TEXT NOT NULL,
    reporter       TEXT NOT NULL,
    reason         TEXT NOT NULL,
    received_ts    BIGINT NOT NULL
);

-- The sender of an event report's event, recorded when it is reported
-- (so administrators see it, and filter on it, whatever the reporter can
-- see later); '' for room reports and for reports made before this column.
ALTER TABLE room_reports ADD COLUMN event_sender TEXT NOT NULL DEFAULT '';
