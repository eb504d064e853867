-- Each cached server key, and each key document served as a notary,
-- remembers the valid_until_ts of the document it was last taken from,
-- counted at most seven days past the time it was stored
-- (document_valid_until_ts), so that an older document (a notary's
-- cached copy, a fetch answered late) cannot replace it: only a document
-- counted valid until at least as late does (keyring.go, store).
--
-- Backfill: a current key's own valid_until_ts is that of its document.
-- An old key's row kept none, so it takes that of the server's newest
-- document stored (federation_key_documents keeps only the newest), which
-- is at least as new as the one it came from: 0 when there is none. All
-- are capped at fetched_ts + 7 days (604800000 ms), a document at the
-- latest fetched_ts of its server's keys (not capped when it has none).
ALTER TABLE federation_server_keys ADD COLUMN document_valid_until_ts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE federation_key_documents ADD COLUMN document_valid_until_ts BIGINT NOT NULL DEFAULT 0;
UPDATE federation_server_keys SET document_valid_until_ts = valid_until_ts WHERE expired_ts = 0;
UPDATE federation_server_keys SET document_valid_until_ts = COALESCE((SELECT d.valid_until_ts FROM federation_key_documents d
    WHERE d.server_name = federation_server_keys.server_name), 0) WHERE expired_ts <> 0;
UPDATE federation_server_keys SET document_valid_until_ts = fetched_ts + 604800000
    WHERE document_valid_until_ts > fetched_ts + 604800000;
UPDATE federation_key_documents SET document_valid_until_ts = valid_until_ts;
UPDATE federation_key_documents SET document_valid_until_ts = (SELECT MAX(k.fetched_ts) FROM federation_server_keys k
    WHERE k.server_name = federation_key_documents.server_name) + 604800000
    WHERE document_valid_until_ts > (SELECT MAX(k.fetched_ts) FROM federation_server_keys k
    WHERE k.server_name = federation_key_documents.server_name) + 604800000;
