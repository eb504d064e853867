-- Files whose rows were deleted (remote cache eviction or expiry) but
-- which were touched too recently to remove safely: an identical upload
-- may be about to commit a row naming them. The sweep and the next
-- eviction retry them.
CREATE TABLE media_blob_garbage (
    sha256   TEXT PRIMARY KEY,
    since_ts BIGINT NOT NULL
);

-- Least recently accessed remote media first, for the cache size cap.
CREATE INDEX media_last_access ON media (last_access_ts);
