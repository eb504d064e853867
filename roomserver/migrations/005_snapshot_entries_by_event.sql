-- Snapshot entries by event: an outlier that arrives again as a timeline
-- event gets a new event NID (a new stream position), and every snapshot
-- holding it is pointed at the new NID in the same transaction
-- (outlier_promotion.go).
CREATE INDEX roomserver_snapshot_entries_event ON roomserver_snapshot_entries (event_nid);
