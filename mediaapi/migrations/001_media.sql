-- The media repository. File bytes are on disk, named by sha256; these
-- tables hold what is known about them.

-- One row per mxc:// URI: local uploads (uploader set), IDs reserved by
-- POST /media/v1/create and not uploaded yet (sha256 = ''), and cached
-- remote media (server_name is another server, uploader = '').
CREATE TABLE media (
    server_name       TEXT NOT NULL,
    media_id          TEXT NOT NULL,
    content_type      TEXT NOT NULL DEFAULT '',
    -- As uploaded (control characters removed); '' when none was given.
    filename          TEXT NOT NULL DEFAULT '',
    size_bytes        BIGINT NOT NULL DEFAULT 0,
    sha256            TEXT NOT NULL DEFAULT '',
    uploader          TEXT NOT NULL DEFAULT '',
    -- When the ID was created or the remote file cached: the legacy
    -- freeze compares against it (spec: "the date the cache was populated").
    created_ts        BIGINT NOT NULL,
    -- 0 until the content arrived.
    uploaded_ts       BIGINT NOT NULL DEFAULT 0,
    -- For pending IDs from /create: when an unused ID is deleted.
    unused_expires_ts BIGINT NOT NULL DEFAULT 0,
    -- For remote media: last download, for cache expiry.
    last_access_ts    BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (server_name, media_id)
);
CREATE INDEX media_uploader ON media (uploader, uploaded_ts);
CREATE INDEX media_sha256 ON media (sha256);
CREATE INDEX media_pending ON media (unused_expires_ts);

-- Thumbnails generated on demand, one per configured size asked for.
CREATE TABLE media_thumbnails (
    server_name   TEXT NOT NULL,
    media_id      TEXT NOT NULL,
    width         INTEGER NOT NULL,
    height        INTEGER NOT NULL,
    method        TEXT NOT NULL,
    animated      BOOLEAN NOT NULL,
    content_type  TEXT NOT NULL,
    size_bytes    BIGINT NOT NULL,
    sha256        TEXT NOT NULL,
    created_ts    BIGINT NOT NULL,
    PRIMARY KEY (server_name, media_id, width, height, method, animated)
);
CREATE INDEX media_thumbnails_sha256 ON media_thumbnails (sha256);

-- URL previews, reused for media_api.url_preview_cache_ttl.
CREATE TABLE media_url_previews (
    url        TEXT PRIMARY KEY,
    fetched_ts BIGINT NOT NULL,
    -- The JSON answer.
    preview    TEXT NOT NULL
);

-- Settings the repository fixes once, such as the legacy freeze time.
CREATE TABLE media_settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
