package mediaapi

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/myelin-chat/myelin/storage"
)

// orphanGrace: a file without rows is removed only if it was not written
// or touched for this long. blobStore.put touches a file it finds already
// stored, so an identical upload between its put and its row's commit
// keeps its bytes.
const orphanGrace = 5 * time.Minute

// enforceRemoteCap evicts the least recently accessed cached remote media
// (rows, their thumbnails, and files no other row references) until the
// remote cache is within media_api.remote_cache_max_bytes. keepServer /
// keepID (the file just cached, about to be served) is never evicted, nor
// is local media.
func (s *Server) enforceRemoteCap(ctx context.Context, keepServer, keepID string) error {
	if s.cfg.RemoteCacheMaxBytes <= 0 {
		return nil
	}
	candidates, err := s.store.evictRemote(ctx, s.serverName, keepServer, keepID, s.cfg.RemoteCacheMaxBytes)
	if err != nil {
		return err
	}
	return s.removeOrphans(ctx, candidates)
}

// thumbnailAdded keeps the remote cache within its cap after a thumbnail
// of remote media m (which counts towards it) was stored. m is kept.
func (s *Server) thumbnailAdded(ctx context.Context, m *mediaRow) {
	if m.ServerName == s.serverName {
		return
	}
	if err := s.enforceRemoteCap(ctx, m.ServerName, m.MediaID); err != nil {
		s.log.Warn("evicting remote media over remote_cache_max_bytes", "err", err)
	}
}

// removeOrphans removes the files of candidates, and of earlier garbage,
// that no row references, recording those too recent to remove (see
// orphanGrace) for a later attempt.
func (s *Server) removeOrphans(ctx context.Context, candidates []string) error {
	now := s.now()
	orphans, err := s.store.orphans(ctx, candidates, now.UnixMilli())
	if err != nil {
		return err
	}
	var errs []error
	for _, sha := range orphans {
		if err := s.blobs.remove(sha, now.Add(-orphanGrace)); err != nil {
			errs = append(errs, err)
			continue
		}
		if !s.blobs.exists(sha) {
			errs = append(errs, s.store.dropGarbage(ctx, sha))
		}
	}
	return errors.Join(errs...)
}

// remoteCacheBytes is the size of cached remote media and its thumbnails.
func remoteCacheBytes(ctx context.Context, q storage.Querier, ourName string) (int64, error) {
	var total int64
	err := q.QueryRow(ctx, `SELECT (SELECT COALESCE(SUM(size_bytes), 0) FROM media WHERE server_name <> $1)
		+ (SELECT COALESCE(SUM(size_bytes), 0) FROM media_thumbnails WHERE server_name <> $1)`, ourName).Scan(&total)
	return total, err
}

// evictBatch is how many eviction candidates are read at a time.
const evictBatch = 100

// evictRemote deletes remote media rows (and their thumbnails), least
// recently accessed first, until the remote cache is at most capBytes, and
// returns the hashes the deleted rows named. It never deletes local media
// or keepServer/keepID.
func (s *store) evictRemote(ctx context.Context, ourName, keepServer, keepID string, capBytes int64) ([]string, error) {
	var hashes []string
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		hashes = hashes[:0]
		total, err := remoteCacheBytes(ctx, tx, ourName)
		if err != nil {
			return err
		}
		for total > capBytes {
			type victim struct{ server, id, sha string }
			rows, err := tx.Query(ctx, `SELECT server_name, media_id, sha256 FROM media
				WHERE server_name <> $1 AND NOT (server_name = $2 AND media_id = $3)
				ORDER BY last_access_ts, created_ts LIMIT `+strconv.Itoa(evictBatch), ourName, keepServer, keepID)
			if err != nil {
				return err
			}
			var victims []victim
			for rows.Next() {
				var v victim
				if err := rows.Scan(&v.server, &v.id, &v.sha); err != nil {
					rows.Close()
					return err
				}
				victims = append(victims, v)
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return err
			}
			if len(victims) == 0 {
				return nil // only the kept file is left
			}
			for _, v := range victims {
				if total <= capBytes {
					return nil
				}
				freed, shas, err := deleteRemote(ctx, tx, v.server, v.id)
				if err != nil {
					return err
				}
				if v.sha != "" {
					shas = append(shas, v.sha)
				}
				hashes = append(hashes, shas...)
				total -= freed
			}
		}
		return nil
	})
	return hashes, err
}

// deleteRemote deletes one cached remote file's row and thumbnails,
// returning the bytes they accounted for and the thumbnails' hashes.
func deleteRemote(ctx context.Context, tx storage.Tx, server, id string) (freed int64, thumbHashes []string, err error) {
	rows, err := tx.Query(ctx, `SELECT sha256, size_bytes FROM media_thumbnails WHERE server_name = $1 AND media_id = $2`, server, id)
	if err != nil {
		return 0, nil, err
	}
	for rows.Next() {
		var sha string
		var size int64
		if err := rows.Scan(&sha, &size); err != nil {
			rows.Close()
			return 0, nil, err
		}
		thumbHashes = append(thumbHashes, sha)
		freed += size
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, nil, err
	}
	if _, err := tx.Exec(ctx, `DELETE FROM media_thumbnails WHERE server_name = $1 AND media_id = $2`, server, id); err != nil {
		return 0, nil, err
	}
	var size int64
	if err := tx.QueryRow(ctx, `DELETE FROM media WHERE server_name = $1 AND media_id = $2 RETURNING size_bytes`, server, id).Scan(&size); err != nil && !storage.IsNoRows(err) {
		return 0, nil, err
	}
	return freed + size, thumbHashes, nil
}

// orphans records candidates as garbage and returns every garbage hash no
// row references, forgetting those that are referenced again.
func (s *store) orphans(ctx context.Context, candidates []string, now int64) ([]string, error) {
	var orphans []string
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		orphans = orphans[:0]
		for _, sha := range candidates {
			if _, err := tx.Exec(ctx, `INSERT INTO media_blob_garbage (sha256, since_ts) VALUES ($1, $2) ON CONFLICT (sha256) DO NOTHING`, sha, now); err != nil {
				return err
			}
		}
		garbage, err := storage.QueryColumn[string](ctx, tx, `SELECT sha256 FROM media_blob_garbage`)
		if err != nil {
			return err
		}
		for _, sha := range garbage {
			var refs int
			if err := tx.QueryRow(ctx, `SELECT (SELECT COUNT(*) FROM media WHERE sha256 = $1) + (SELECT COUNT(*) FROM media_thumbnails WHERE sha256 = $1)`, sha).Scan(&refs); err != nil {
				return err
			}
			if refs == 0 {
				orphans = append(orphans, sha)
			} else if _, err := tx.Exec(ctx, `DELETE FROM media_blob_garbage WHERE sha256 = $1`, sha); err != nil {
				return err
			}
		}
		return nil
	})
	return orphans, err
}

// dropGarbage forgets a hash whose file is gone.
func (s *store) dropGarbage(ctx context.Context, sha string) error {
	return s.db.Write(ctx, func(tx storage.Tx) error {
		_, err := tx.Exec(ctx, `DELETE FROM media_blob_garbage WHERE sha256 = $1`, sha)
		return err
	})
}
