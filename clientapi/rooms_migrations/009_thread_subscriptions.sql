-- MSC4306 thread subscriptions, a stream like receipts: each change
-- deletes the previous row of its (user, room, thread) and inserts a new
-- one, so position is the stream position of the latest change (the
-- bump_stamp of MSC4308) and MAX(position) is the stream head.
-- An unsubscription keeps its row (subscribed false) with
-- unsubscribed_at, the room stream position when it happened: an
-- automatic subscription caused by an event at or before it is refused.
CREATE TABLE thread_subscriptions (
    position        BIGSERIAL PRIMARY KEY,
    user_id         TEXT NOT NULL,
    room_id         TEXT NOT NULL,
    thread_root     TEXT NOT NULL,
    subscribed      BOOLEAN NOT NULL,
    automatic       BOOLEAN NOT NULL,
    unsubscribed_at BIGINT NOT NULL,
    UNIQUE (user_id, room_id, thread_root)
);
CREATE INDEX thread_subscriptions_by_user ON thread_subscriptions (user_id, position);
