package clientapi

import (
	"context"
	"time"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// insertAlias maps a local alias to roomID; M_ROOM_IN_USE if the alias
// exists. Spec: client-server-api, "PUT /_matrix/client/v3/directory/room/{roomAlias}".
func (s *Server) insertAlias(ctx context.Context, alias, roomID, creator string) error {
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO room_aliases (alias, room_id, creator, created_ts) VALUES ($1, $2, $3, $4)`,
			alias, roomID, creator, time.Now().UnixMilli())
		return err
	})
	if storage.IsUniqueViolation(err) {
		return mxerr.New(mxerr.RoomInUse, "room alias %s already exists", alias)
	}
	return err
}

// lookupAlias returns the room an alias maps to; M_NOT_FOUND otherwise.
func (s *Server) lookupAlias(ctx context.Context, alias string) (roomID, creator string, err error) {
	err = s.db.Reader().QueryRow(ctx, `SELECT room_id, creator FROM room_aliases WHERE alias = $1`, alias).Scan(&roomID, &creator)
	if storage.IsNoRows(err) {
		return "", "", mxerr.New(mxerr.NotFound, "room alias %s not found", alias)
	}
	return roomID, creator, err
}

// deleteAlias removes an alias; it reports whether it existed.
func (s *Server) deleteAlias(ctx context.Context, alias string) (bool, error) {
	var n int64
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		res, err := tx.Exec(ctx, `DELETE FROM room_aliases WHERE alias = $1`, alias)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	return n > 0, err
}

// aliasesOf lists the local aliases of a room, sorted.
func (s *Server) aliasesOf(ctx context.Context, roomID string) ([]string, error) {
	rows, err := s.db.Reader().Query(ctx, `SELECT alias FROM room_aliases WHERE room_id = $1 ORDER BY alias`, roomID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []string{}
	for rows.Next() {
		var a string
		if err := rows.Scan(&a); err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

// setPublished adds a room to or removes it from the published directory.
func (s *Server) setPublished(ctx context.Context, roomID string, public bool) error {
	return s.db.Write(ctx, func(tx storage.Tx) error {
		if !public {
			_, err := tx.Exec(ctx, `DELETE FROM room_directory WHERE room_id = $1`, roomID)
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO room_directory (room_id, published_ts) VALUES ($1, $2)
			ON CONFLICT (room_id) DO NOTHING`, roomID, time.Now().UnixMilli())
		return err
	})
}

// isPublished reports whether a room is in the published directory.
func (s *Server) isPublished(ctx context.Context, roomID string) (bool, error) {
	var n int
	err := s.db.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM room_directory WHERE room_id = $1`, roomID).Scan(&n)
	return n > 0, err
}

// publishedRooms lists every published room ID.
func (s *Server) publishedRooms(ctx context.Context) ([]string, error) {
	return storage.QueryColumn[string](ctx, s.db.Reader(), `SELECT room_id FROM room_directory ORDER BY room_id`)
}

// setNetworkPublished adds a room to or removes it from the directory of
// network networkID of application service asID.
// Spec: client-server-api, "PUT /_matrix/client/v3/directory/list/appservice/{networkId}/{roomId}".
func (s *Server) setNetworkPublished(ctx context.Context, asID, networkID, roomID string, public bool) error {
	return s.db.Write(ctx, func(tx storage.Tx) error {
		if !public {
			_, err := tx.Exec(ctx, `DELETE FROM appservice_room_directory WHERE appservice_id = $1 AND network_id = $2 AND room_id = $3`,
				asID, networkID, roomID)
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO appservice_room_directory (appservice_id, network_id, room_id, published_ts) VALUES ($1, $2, $3, $4)
			ON CONFLICT (appservice_id, network_id, room_id) DO NOTHING`, asID, networkID, roomID, time.Now().UnixMilli())
		return err
	})
}

// networkPublishedRooms lists the rooms published in the directory of
// network networkID of application service asID.
func (s *Server) networkPublishedRooms(ctx context.Context, asID, networkID string) ([]string, error) {
	return storage.QueryColumn[string](ctx, s.db.Reader(), `SELECT room_id FROM appservice_room_directory
		WHERE appservice_id = $1 AND network_id = $2 ORDER BY room_id`, asID, networkID)
}

// allNetworksPublishedRooms lists the rooms of the homeserver's own
// directory and of every application service network's, each once.
func (s *Server) allNetworksPublishedRooms(ctx context.Context) ([]string, error) {
	return storage.QueryColumn[string](ctx, s.db.Reader(), `SELECT room_id FROM room_directory
		UNION SELECT room_id FROM appservice_room_directory ORDER BY room_id`)
}
