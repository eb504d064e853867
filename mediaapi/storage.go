package mediaapi

import (
	"context"
	"strconv"
	"time"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// mediaRow is one row of the media table.
type mediaRow struct {
	ServerName, MediaID string
	ContentType         string
	Filename            string
	Size                int64
	SHA256              string // "" while pending
	Uploader            string
	Created             int64 // ms
	Uploaded            int64 // ms; 0 while pending
	UnusedExpires       int64 // ms; pending IDs only
}

func (m *mediaRow) pending() bool { return m.Uploaded == 0 }

// store is the media tables.
type store struct {
	db *storage.DB
}

const mediaColumns = `server_name, media_id, content_type, filename, size_bytes, sha256, uploader, created_ts, uploaded_ts, unused_expires_ts`

func scanMedia(row interface{ Scan(...any) error }) (*mediaRow, error) {
	m := &mediaRow{}
	err := row.Scan(&m.ServerName, &m.MediaID, &m.ContentType, &m.Filename, &m.Size, &m.SHA256, &m.Uploader, &m.Created, &m.Uploaded, &m.UnusedExpires)
	if storage.IsNoRows(err) {
		return nil, nil
	}
	return m, err
}

// get returns the media row, or nil.
func (s *store) get(ctx context.Context, serverName, mediaID string) (*mediaRow, error) {
	return scanMedia(s.db.Reader().QueryRow(ctx,
		`SELECT `+mediaColumns+` FROM media WHERE server_name = $1 AND media_id = $2`, serverName, mediaID))
}

// usedBytes is what uploader's uploads add up to.
func usedBytes(ctx context.Context, q storage.Querier, uploader string) (int64, error) {
	var used int64
	err := q.QueryRow(ctx, `SELECT COALESCE(SUM(size_bytes), 0) FROM media WHERE uploader = $1`, uploader).Scan(&used)
	return used, err
}

// insertUpload records a finished local upload, checking the quota inside
// the write so concurrent uploads cannot together pass it.
func (s *store) insertUpload(ctx context.Context, m *mediaRow, quota int64) error {
	return s.db.Write(ctx, func(tx storage.Tx) error {
		if err := checkQuota(ctx, tx, m.Uploader, m.Size, quota); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO media (`+mediaColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0)`,
			m.ServerName, m.MediaID, m.ContentType, m.Filename, m.Size, m.SHA256, m.Uploader, m.Created, m.Uploaded)
		return err
	})
}

func checkQuota(ctx context.Context, q storage.Querier, uploader string, size, quota int64) error {
	if quota <= 0 {
		return nil
	}
	used, err := usedBytes(ctx, q, uploader)
	if err != nil {
		return err
	}
	if used+size > quota {
		// Spec: client-server-api, "Security considerations": too much
		// media from one user is 403 M_FORBIDDEN.
		return mxerr.New(mxerr.Forbidden, "media quota exceeded: %d of %d bytes used", used, quota)
	}
	return nil
}

// reserve records an ID from /create, refusing a user with too many
// pending ones.
func (s *store) reserve(ctx context.Context, m *mediaRow, maxPending int, now int64) error {
	return s.db.Write(ctx, func(tx storage.Tx) error {
		var pending int
		if err := tx.QueryRow(ctx, `SELECT COUNT(*) FROM media WHERE uploader = $1 AND uploaded_ts = 0 AND unused_expires_ts > $2`,
			m.Uploader, now).Scan(&pending); err != nil {
			return err
		}
		if pending >= maxPending {
			// Spec: POST /_matrix/media/v1/create: too many pending
			// uploads is 429 M_LIMIT_EXCEEDED.
			return mxerr.New(mxerr.LimitExceeded, "too many pending uploads; upload to or wait out the ones you have").
				With("retry_after_ms", int64(60_000))
		}
		_, err := tx.Exec(ctx, `INSERT INTO media (`+mediaColumns+`) VALUES ($1, $2, '', '', 0, '', $3, $4, 0, $5)`,
			m.ServerName, m.MediaID, m.Uploader, m.Created, m.UnusedExpires)
		return err
	})
}

// fillPending stores content for a pending ID. It returns
// M_CANNOT_OVERWRITE_MEDIA if content arrived first, M_NOT_FOUND if the ID
// is unknown or expired, and M_FORBIDDEN if it belongs to someone else.
func (s *store) fillPending(ctx context.Context, m *mediaRow, quota int64, now int64) error {
	return s.db.Write(ctx, func(tx storage.Tx) error {
		cur, err := scanMedia(tx.QueryRow(ctx, `SELECT `+mediaColumns+` FROM media WHERE server_name = $1 AND media_id = $2`, m.ServerName, m.MediaID))
		if err != nil {
			return err
		}
		if err := checkPendingOwner(cur, m.Uploader, now); err != nil {
			return err
		}
		if err := checkQuota(ctx, tx, m.Uploader, m.Size, quota); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE media SET content_type = $3, filename = $4, size_bytes = $5, sha256 = $6, uploaded_ts = $7, unused_expires_ts = 0
			WHERE server_name = $1 AND media_id = $2 AND uploaded_ts = 0`,
			m.ServerName, m.MediaID, m.ContentType, m.Filename, m.Size, m.SHA256, m.Uploaded)
		return err
	})
}

// checkPendingOwner is the spec's list of refusals for
// PUT /_matrix/media/v3/upload/{serverName}/{mediaId}.
func checkPendingOwner(cur *mediaRow, user string, now int64) error {
	switch {
	case cur == nil || cur.Uploader == "" || (cur.pending() && cur.UnusedExpires <= now):
		return mxerr.New(mxerr.NotFound, "unknown or expired media ID")
	case cur.Uploader != user:
		return mxerr.New(mxerr.Forbidden, "this media ID was created by another user")
	case !cur.pending():
		return mxerr.New(mxerr.CannotOverwriteMedia, "media already uploaded").WithStatus(409)
	}
	return nil
}

// insertRemote records a freshly cached remote file.
func (s *store) insertRemote(ctx context.Context, m *mediaRow) error {
	return s.db.Write(ctx, func(tx storage.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO media (`+mediaColumns+`, last_access_ts) VALUES ($1, $2, $3, $4, $5, $6, '', $7, $7, 0, $7)
			ON CONFLICT (server_name, media_id) DO UPDATE SET content_type = excluded.content_type, filename = excluded.filename,
			size_bytes = excluded.size_bytes, sha256 = excluded.sha256, created_ts = excluded.created_ts,
			uploaded_ts = excluded.uploaded_ts, last_access_ts = excluded.last_access_ts`,
			m.ServerName, m.MediaID, m.ContentType, m.Filename, m.Size, m.SHA256, m.Created)
		return err
	})
}

// touchRemote notes a download of cached remote media (for expiry and
// eviction). It writes at most once per resolution per file.
func (s *store) touchRemote(ctx context.Context, serverName, mediaID string, now int64, resolution time.Duration) error {
	return s.db.Write(ctx, func(tx storage.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE media SET last_access_ts = $3 WHERE server_name = $1 AND media_id = $2 AND last_access_ts < $4`,
			serverName, mediaID, now, now-resolution.Milliseconds())
		return err
	})
}

// thumbRow is a cached thumbnail.
type thumbRow struct {
	ContentType string
	Size        int64
	SHA256      string
}

func (s *store) getThumbnail(ctx context.Context, serverName, mediaID string, t thumbKey) (*thumbRow, error) {
	r := &thumbRow{}
	err := s.db.Reader().QueryRow(ctx, `SELECT content_type, size_bytes, sha256 FROM media_thumbnails
		WHERE server_name = $1 AND media_id = $2 AND width = $3 AND height = $4 AND method = $5 AND animated = $6`,
		serverName, mediaID, t.Width, t.Height, t.Method, t.Animated).Scan(&r.ContentType, &r.Size, &r.SHA256)
	if storage.IsNoRows(err) {
		return nil, nil
	}
	return r, err
}

func (s *store) putThumbnail(ctx context.Context, serverName, mediaID string, t thumbKey, r *thumbRow, now int64) error {
	return s.db.Write(ctx, func(tx storage.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO media_thumbnails (server_name, media_id, width, height, method, animated, content_type, size_bytes, sha256, created_ts)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING`,
			serverName, mediaID, t.Width, t.Height, t.Method, t.Animated, r.ContentType, r.Size, r.SHA256, now)
		return err
	})
}

// getPreview returns a cached preview fetched after notBefore, or "".
func (s *store) getPreview(ctx context.Context, url string, notBefore int64) (string, error) {
	var preview string
	err := s.db.Reader().QueryRow(ctx, `SELECT preview FROM media_url_previews WHERE url = $1 AND fetched_ts >= $2`, url, notBefore).Scan(&preview)
	if storage.IsNoRows(err) {
		return "", nil
	}
	return preview, err
}

func (s *store) putPreview(ctx context.Context, url, preview string, now int64) error {
	return s.db.Write(ctx, func(tx storage.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO media_url_previews (url, fetched_ts, preview) VALUES ($1, $2, $3)
			ON CONFLICT (url) DO UPDATE SET fetched_ts = excluded.fetched_ts, preview = excluded.preview`, url, now, preview)
		return err
	})
}

// freezeTime returns the recorded legacy freeze time, recording now as
// the freeze on the first start.
func (s *store) freezeTime(ctx context.Context, now time.Time) (time.Time, error) {
	var raw string
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO media_settings (name, value) VALUES ('legacy_freeze_ts', $1) ON CONFLICT (name) DO NOTHING`,
			strconv.FormatInt(now.UnixMilli(), 10)); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT value FROM media_settings WHERE name = 'legacy_freeze_ts'`).Scan(&raw)
	})
	if err != nil {
		return time.Time{}, err
	}
	ms, err := strconv.ParseInt(raw, 10, 64)
	if err != nil {
		return time.Time{}, err
	}
	return time.UnixMilli(ms), nil
}

// expire deletes pending IDs past their expiry, remote media not
// downloaded since remoteBefore and previews older than previewBefore, then
// returns the hashes no row references any more.
func (s *store) expire(ctx context.Context, ourName string, now, remoteBefore, previewBefore int64) ([]string, error) {
	var orphans []string
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		orphans = orphans[:0]
		candidates, err := storage.QueryColumn[string](ctx, tx, `SELECT sha256 FROM media WHERE server_name <> $1 AND last_access_ts < $2 AND sha256 <> ''
			UNION SELECT t.sha256 FROM media_thumbnails t JOIN media m ON m.server_name = t.server_name AND m.media_id = t.media_id
			WHERE m.server_name <> $1 AND m.last_access_ts < $2`, ourName, remoteBefore)
		if err != nil {
			return err
		}
		// Their thumbnails go with them.
		if _, err := tx.Exec(ctx, `DELETE FROM media_thumbnails WHERE EXISTS (SELECT 1 FROM media m WHERE m.server_name = media_thumbnails.server_name
			AND m.media_id = media_thumbnails.media_id AND m.server_name <> $1 AND m.last_access_ts < $2)`, ourName, remoteBefore); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM media WHERE server_name <> $1 AND last_access_ts < $2`, ourName, remoteBefore); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM media WHERE uploaded_ts = 0 AND unused_expires_ts <= $1`, now); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM media_url_previews WHERE fetched_ts < $1`, previewBefore); err != nil {
			return err
		}
		for _, sha := range candidates {
			var refs int
			if err := tx.QueryRow(ctx, `SELECT (SELECT COUNT(*) FROM media WHERE sha256 = $1) + (SELECT COUNT(*) FROM media_thumbnails WHERE sha256 = $1)`, sha).Scan(&refs); err != nil {
				return err
			}
			if refs == 0 {
				orphans = append(orphans, sha)
			}
		}
		return nil
	})
	return orphans, err
}
