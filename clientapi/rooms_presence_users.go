package clientapi

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/myelin-chat/myelin/storage"
)

// PresenceOfUsers returns the current presence of those of userIDs that
// have any, at stream positions up to upTo, for a sync that starts
// sharing a room with them: their presence is news to the syncing user
// even when it did not change. Spec: client-server-api, "Presence"
// (Complement: TestSync "Newly joined room includes presence in
// incremental sync").
func (s *Server) PresenceOfUsers(ctx context.Context, userIDs []string, upTo int64) ([]Presence, error) {
	var out []Presence
	for chunk := range slices.Chunk(userIDs, 200) {
		var b strings.Builder
		args := []any{upTo}
		b.WriteString(`SELECT user_id, presence, status_msg, last_active_ts, position FROM presence
			WHERE position <= $1 AND user_id IN (`)
		for i, id := range chunk {
			if i > 0 {
				b.WriteString(", ")
			}
			args = append(args, id)
			fmt.Fprintf(&b, "$%d", len(args))
		}
		b.WriteString(") ORDER BY position")
		err := s.db.Read(ctx, func(q storage.Querier) error {
			rows, err := q.Query(ctx, b.String(), args...)
			if err != nil {
				return err
			}
			defer rows.Close()
			for rows.Next() {
				var p Presence
				if err := rows.Scan(&p.UserID, &p.Presence, &p.StatusMsg, &p.LastActiveTS, &p.Position); err != nil {
					return err
				}
				out = append(out, p)
			}
			return rows.Err()
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}
