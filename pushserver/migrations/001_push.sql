-- Push: rules, pushers, notifications, read markers and the delivery queue.

-- One row per user who changed their push rules: their own rules and
-- their changes to server-default rules (pushserver.userRules as JSON).
-- Users without a row have the server defaults.
CREATE TABLE push_rules (
    user_id TEXT PRIMARY KEY,
    rules   TEXT NOT NULL
);

-- The stream positions push has consumed ('room_events', 'receipts'),
-- written in the same transaction as what was derived from them.
CREATE TABLE push_positions (
    stream   TEXT PRIMARY KEY,
    position BIGINT NOT NULL
);

-- One row per event that notified a user (a matching rule with the
-- notify action). thread_id is 'main' for the main timeline, else the
-- thread root. Unread counts are the rows past the user's read markers.
-- Spec: client-server-api, "Receiving notifications", "GET /notifications".
CREATE TABLE push_notifications (
    id         BIGSERIAL PRIMARY KEY,
    user_id    TEXT NOT NULL,
    room_id    TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    stream_pos BIGINT NOT NULL,
    thread_id  TEXT NOT NULL,
    highlight  BOOLEAN NOT NULL,
    actions    TEXT NOT NULL,
    ts         BIGINT NOT NULL
);
CREATE INDEX push_notifications_unread ON push_notifications (user_id, room_id, stream_pos);
CREATE INDEX push_notifications_list ON push_notifications (user_id, id);
CREATE INDEX push_notifications_ts ON push_notifications (ts);

-- How far a user has read a room: thread_id '' is an unthreaded
-- receipt (it reads every thread), 'main' the main timeline, else a
-- thread root. read_pos is the stream position of the receipt's event;
-- it only moves forward (the later of m.read and m.read.private wins).
-- Spec: client-server-api, "Marking notifications as read".
CREATE TABLE push_read (
    user_id   TEXT NOT NULL,
    room_id   TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    read_pos  BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, thread_id)
);

-- HTTP pushers. device_id is the device whose access token created the
-- pusher: deleting the device (logout, password change) deletes it.
-- Spec: client-server-api, "POST /_matrix/client/v3/pushers/set".
CREATE TABLE pushers (
    user_id             TEXT NOT NULL,
    app_id              TEXT NOT NULL,
    pushkey             TEXT NOT NULL,
    device_id           TEXT NOT NULL,
    kind                TEXT NOT NULL,
    app_display_name    TEXT NOT NULL,
    device_display_name TEXT NOT NULL,
    profile_tag         TEXT NOT NULL,
    lang                TEXT NOT NULL,
    data                TEXT NOT NULL,
    pushkey_ts          BIGINT NOT NULL,
    PRIMARY KEY (user_id, app_id, pushkey)
);
CREATE INDEX pushers_by_key ON pushers (app_id, pushkey);
CREATE INDEX pushers_by_device ON pushers (user_id, device_id);

-- Notifications waiting for delivery to one pusher, oldest first. body
-- is the gateway request's notification object without devices (added
-- from the pusher at send time). A row leaves the queue when the
-- gateway accepts it, rejects the pushkey, or give_up_after passes.
CREATE TABLE push_queue (
    id              BIGSERIAL PRIMARY KEY,
    user_id         TEXT NOT NULL,
    app_id          TEXT NOT NULL,
    pushkey         TEXT NOT NULL,
    body            TEXT NOT NULL,
    tweaks          TEXT NOT NULL,
    attempts        INTEGER NOT NULL,
    queued_ts       BIGINT NOT NULL,
    next_attempt_ts BIGINT NOT NULL
);
CREATE INDEX push_queue_pusher ON push_queue (user_id, app_id, pushkey, id);
CREATE INDEX push_queue_due ON push_queue (next_attempt_ts);
