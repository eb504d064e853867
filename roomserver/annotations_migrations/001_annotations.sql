-- The m.annotation relations (reactions) of the stored events, written in
-- the transaction that stores each event, so that a local user's second
-- identical annotation can be refused inside its send's transaction.
-- The key is not indexed (it may be long): a user has few annotations of
-- one event, found by (relates_to, sender).
-- Spec: client-server-api, "Event annotations", "Avoiding duplicate
-- annotations".
CREATE TABLE roomserver_annotations (
    event_id TEXT PRIMARY KEY,
    relates_to TEXT NOT NULL,
    sender TEXT NOT NULL,
    type TEXT NOT NULL,
    annotation_key TEXT NOT NULL
);
CREATE INDEX roomserver_annotations_by_target ON roomserver_annotations (relates_to, sender);

-- One row once the events stored before this table existed were indexed.
CREATE TABLE roomserver_annotations_backfilled (
    done BOOLEAN NOT NULL
);
