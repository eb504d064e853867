// Package mediaapi is the media repository: uploads (direct and the async
// create-then-upload pair), authenticated downloads and thumbnails, the
// frozen legacy /_matrix/media/v3 endpoints, URL previews, the federation
// media endpoints and the cache of remote media.
//
// Spec: client-server-api, "Content repository"; server-server-api,
// "Content Repository".
//
// Storage. File bytes live on disk under media_api.store_path, named by
// their SHA-256, so identical uploads are stored once. Every write goes to
// a temporary file that is fsynced and renamed into place before the
// database row naming it commits: a crash or an interrupted upload leaves
// at most a temporary file (removed by the sweep), never a row without its
// bytes or a partial file under a content name. Metadata (media rows,
// cached thumbnails, URL previews, the legacy freeze time) is in the
// database, in the tables of migrations/.
//
// Safety. Media IDs and server names are checked against the spec's
// grammar before anything else (400 otherwise), and never become file
// paths. Downloads carry a sandboxing Content-Security-Policy and are
// inline only for an allow-list of content types. Images are measured with
// image.DecodeConfig before any decode and refused past max_image_pixels.
// Outbound fetches (URL previews, remote media) go through a dialer that
// checks every resolved address at connect time, so neither redirects nor
// DNS rebinding reach internal addresses. Downloads are charged to a byte
// budget per user (per client IP on the legacy endpoints) before any byte
// is sent. The remote media cache is bounded by remote_cache_max_bytes:
// least recently downloaded remote files are evicted first; files whose
// rows are gone are removed once no upload can be about to reuse them
// (media_blob_garbage remembers the ones still too recent).
//
// Concurrency. A Server is safe for concurrent use. Thumbnail decodes are
// bounded by a semaphore (max_thumbnail_jobs); concurrent requests for the
// same remote file or thumbnail share one fetch or one generation.
package mediaapi
