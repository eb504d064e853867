-- Notifications are written in the transaction of the event that raises
-- them (pushserver.CountInTx), whichever process writes the event. That
-- process caches compiled push rules; this one-row counter, bumped in
-- every transaction that changes anyone's rules, tells it when its cache
-- is stale (it reads the counter inside the event's transaction).
CREATE TABLE push_rules_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO push_rules_version (id, version) VALUES (1, 0);
