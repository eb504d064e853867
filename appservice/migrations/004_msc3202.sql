-- MSC3202 for services that opted in (as for to-device messages): each
-- service's position in the key server's device-list stream and in its
-- key-count change stream, written in the same transaction as the
-- appservice_txns row built up to them. NULL while the service does not
-- receive them.
ALTER TABLE appservice_positions ADD COLUMN device_list_pos BIGINT;
ALTER TABLE appservice_positions ADD COLUMN key_count_pos BIGINT;
