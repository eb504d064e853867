-- Unread counts (pushserver.unreadQuery) read a user's notifications in a
-- room grouped by thread, with their highlight flag. The index below
-- holds every column that query reads, in its GROUP BY order, so the
-- counts come from adjacent index entries instead of one table-row read
-- per notification (rows of one user are spread over many pages, as each
-- event's notifications for all members are written together). It
-- replaces push_notifications_unread, which only that query used.
DROP INDEX push_notifications_unread;
CREATE INDEX push_notifications_unread_counts ON push_notifications (user_id, room_id, thread_id, stream_pos, highlight);
