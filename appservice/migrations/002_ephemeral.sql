-- Ephemeral data (receive_ephemeral): each service's position in the
-- receipt and presence streams, written in the same transaction as the
-- appservice_txns row built up to them. NULL while the service does not
-- receive ephemeral data; set to the stream heads when it starts to (a
-- service is not flooded with old receipts). Typing is held in memory
-- and its position with it (see ephemeral.go).
ALTER TABLE appservice_positions ADD COLUMN receipt_pos BIGINT;
ALTER TABLE appservice_positions ADD COLUMN presence_pos BIGINT;
