-- One index keyed by user on push_notifications instead of two. Every
-- notification row costs an entry in each of the table's indexes, and an
-- entry keyed by user lands on that user's own leaf page: a message to a
-- room of N members dirtied N leaf pages per such index, each written to
-- the WAL (SQLite) at the commit (docs/benchmarks.md, "sendfan"). The two
-- were push_notifications_list (user_id, id), for GET /notifications, and
-- push_notifications_unread_counts (user_id, room_id, thread_id,
-- stream_pos, highlight), for the recount when a read marker moves. The
-- index below serves both: GET /notifications pages a user's rows by
-- stream position, newest first (the same order as by id: an event's
-- notifications are written with it, in stream order), and the recount
-- reads the user's rows past the new marker (a receipt's marker is
-- usually at or near the newest event, so few rows), taking room,
-- thread and highlight from the index. push_notifications_ts (the prune)
-- stays: its entries are appended, in time order, to the same last page.
DROP INDEX push_notifications_list;
DROP INDEX push_notifications_unread_counts;
CREATE INDEX push_notifications_user_pos ON push_notifications (user_id, stream_pos, room_id, thread_id, highlight);
