-- Unread counts kept as they change instead of counted on every read:
-- one row per (user, room, thread) that has notifications past the
-- user's read markers, holding how many (and how many highlight).
-- Rows that reach zero are deleted. Kept in the transactions that change
-- what they summarise (pushserver/unread_summary.go): the one writing
-- an event's notifications, the one moving read markers, the prune of
-- old notifications. A read of a woken /sync response's counts is then
-- one row per thread, whatever the backlog (push_notifications past a
-- marker grew by one row per message unread).
CREATE TABLE push_unread (
    user_id       TEXT NOT NULL,
    room_id       TEXT NOT NULL,
    thread_id     TEXT NOT NULL,
    notifications BIGINT NOT NULL,
    highlights    BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, thread_id)
);
-- The rows as the counts stood: notifications past both the unthreaded
-- marker ('') and their thread's marker.
INSERT INTO push_unread (user_id, room_id, thread_id, notifications, highlights)
SELECT n.user_id, n.room_id, n.thread_id, COUNT(*), SUM(CASE WHEN n.highlight THEN 1 ELSE 0 END)
FROM push_notifications n
LEFT JOIN push_read ra ON ra.user_id = n.user_id AND ra.room_id = n.room_id AND ra.thread_id = ''
LEFT JOIN push_read rt ON rt.user_id = n.user_id AND rt.room_id = n.room_id AND rt.thread_id = n.thread_id
WHERE n.stream_pos > COALESCE(ra.read_pos, 0) AND n.stream_pos > COALESCE(rt.read_pos, 0)
GROUP BY n.user_id, n.room_id, n.thread_id;
