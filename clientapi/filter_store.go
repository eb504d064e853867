package clientapi

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"strconv"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// Filter returns userID's stored filter filterID, parsed. An unknown ID,
// or one that belongs to another user, is M_NOT_FOUND. The sync component
// calls it for ?filter=<id>.
func (s *Server) Filter(ctx context.Context, userID, filterID string) (*Filter, error) {
	local := s.localpart(userID)
	if local == "" {
		return nil, mxerr.New(mxerr.NotFound, "unknown filter")
	}
	stored, err := s.loadFilter(ctx, local, filterID)
	if err != nil {
		return nil, err
	}
	return ParseFilter(stored)
}

// storeFilter stores a validated, compacted filter and returns its ID. The
// same filter stored twice by one user gets the same ID. IDs are decimal
// numbers, so they never start with '{' (which marks inline filters).
func (s *Server) storeFilter(ctx context.Context, local string, filterJSON []byte) (string, error) {
	hash := sha256.Sum256(filterJSON)
	var nid int64
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		// DO UPDATE (not DO NOTHING) so RETURNING yields the existing row.
		return tx.QueryRow(ctx, `
			INSERT INTO filters (localpart, filter_hash, filter_json) VALUES ($1, $2, $3)
			ON CONFLICT (localpart, filter_hash) DO UPDATE SET filter_json = excluded.filter_json
			RETURNING filter_nid`, local, hash[:], string(filterJSON)).Scan(&nid)
	})
	if err != nil {
		return "", err
	}
	return strconv.FormatInt(nid, 10), nil
}

// loadFilter returns the JSON of one of local's filters.
func (s *Server) loadFilter(ctx context.Context, local, filterID string) (json.RawMessage, error) {
	nid, err := strconv.ParseInt(filterID, 10, 64)
	if err != nil || nid <= 0 || strconv.FormatInt(nid, 10) != filterID {
		return nil, mxerr.New(mxerr.NotFound, "unknown filter")
	}
	var stored string
	err = s.db.Reader().QueryRow(ctx, `
		SELECT filter_json FROM filters WHERE filter_nid = $1 AND localpart = $2`, nid, local).Scan(&stored)
	if storage.IsNoRows(err) {
		return nil, mxerr.New(mxerr.NotFound, "unknown filter")
	}
	if err != nil {
		return nil, err
	}
	return json.RawMessage(stored), nil
}
