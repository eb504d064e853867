-- To-device messages for services that receive ephemeral data
-- (MSC2409, MSC4203): each service's position in the to-device stream,
-- written in the same transaction as the appservice_txns row built up to
-- it. NULL while the service does not receive them.
ALTER TABLE appservice_positions ADD COLUMN to_device_pos BIGINT;
