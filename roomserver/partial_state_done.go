package roomserver

import "context"

// ResyncedAfter implements ClientReads. The position of a completion is
// the room stream head when it committed (CompletePartialState), so an
// indexer that has read the stream up to its position has seen every
// event the resync's state could be compared with.
func (s *Server) ResyncedAfter(ctx context.Context, after int64) (map[string]int64, error) {
	rows, err := s.db.Reader().Query(ctx, `SELECT room_id, stream_pos FROM roomserver_partial_state_done
		WHERE stream_pos > $1 ORDER BY stream_pos`, after)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var roomID string
		var pos int64
		if err := rows.Scan(&roomID, &pos); err != nil {
			return nil, err
		}
		out[roomID] = pos
	}
	return out, rows.Err()
}
