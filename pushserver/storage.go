package pushserver

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// The streams whose positions push stores in push_positions.
const (
	eventsStream   = "room_events"
	receiptsStream = "receipts"
)

func (s *Server) loadPositions(ctx context.Context) (events, receipts int64, err error) {
	rows, err := s.db.Reader().Query(ctx, `SELECT stream, position FROM push_positions`)
	if err != nil {
		return 0, 0, err
	}
	defer rows.Close()
	for rows.Next() {
		var stream string
		var pos int64
		if err := rows.Scan(&stream, &pos); err != nil {
			return 0, 0, err
		}
		switch stream {
		case eventsStream:
			events = pos
		case receiptsStream:
			receipts = pos
		}
	}
	return events, receipts, rows.Err()
}

// errMoved is returned when a consumer's stored position is not the one
// it read from: another writer advanced it, and the batch is discarded.
var errMoved = fmt.Errorf("pushserver: consumer position moved underneath")

// advancePosition moves a consumer from from to to inside tx, failing
// with errMoved when the stored position is not from.
func advancePosition(ctx context.Context, tx storage.Tx, stream string, from, to int64) error {
	if from == 0 {
		res, err := tx.Exec(ctx, `INSERT INTO push_positions (stream, position) VALUES ($1, $2)
			ON CONFLICT (stream) DO UPDATE SET position = excluded.position WHERE push_positions.position = 0`, stream, to)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return errMoved
		}
		return nil
	}
	res, err := tx.Exec(ctx, `UPDATE push_positions SET position = $1 WHERE stream = $2 AND position = $3`, to, stream, from)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return errMoved
	}
	return nil
}

// loadUserRules reads a user's stored rules (empty when they never
// changed any).
func loadUserRules(ctx context.Context, q storage.Querier, userID string, threadRules bool) (*userRules, error) {
	var data string
	err := q.QueryRow(ctx, `SELECT rules FROM push_rules WHERE user_id = $1`, userID).Scan(&data)
	u := &userRules{threadRules: threadRules}
	if storage.IsNoRows(err) {
		return u, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(data), u); err != nil {
		return nil, fmt.Errorf("pushserver: stored rules of %s: %w", userID, err)
	}
	return u, nil
}

// Per-engine text: PostgreSQL locks the user's row so concurrent changes
// apply one after the other; SQLite has a single writer already.
const (
	selectRulesForUpdatePostgres = `SELECT rules FROM push_rules WHERE user_id = $1 FOR UPDATE`
	selectRulesForUpdateSQLite   = `SELECT rules FROM push_rules WHERE user_id = $1`
)

// maxStoredRulesBytes bounds one user's stored rules.
const maxStoredRulesBytes = 256 << 10

// updateRules applies change to userID's rules in one transaction and
// rewrites their m.push_rules account data in the same transaction.
func (s *Server) updateRules(ctx context.Context, userID string, change func(u *userRules) error) error {
	return s.db.Write(ctx, func(tx storage.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO push_rules (user_id, rules) VALUES ($1, '{}') ON CONFLICT (user_id) DO NOTHING`, userID); err != nil {
			return err
		}
		query := selectRulesForUpdateSQLite
		if s.db.Engine() == storage.Postgres {
			query = selectRulesForUpdatePostgres
		}
		var data string
		if err := tx.QueryRow(ctx, query, userID).Scan(&data); err != nil {
			return err
		}
		u := &userRules{threadRules: s.cfg.ThreadSubscriptionRules}
		if err := json.Unmarshal([]byte(data), u); err != nil {
			return fmt.Errorf("pushserver: stored rules of %s: %w", userID, err)
		}
		if err := change(u); err != nil {
			return err
		}
		stored, err := json.Marshal(u)
		if err != nil {
			return err
		}
		if len(stored) > maxStoredRulesBytes {
			return mxerr.New(mxerr.ResourceLimitExceeded, "push rules would exceed %d bytes", maxStoredRulesBytes).WithStatus(400)
		}
		if _, err := tx.Exec(ctx, `UPDATE push_rules SET rules = $1 WHERE user_id = $2`, string(stored), userID); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE push_rules_version SET version = version + 1 WHERE id = 1`); err != nil {
			return err
		}
		content, err := rulesContent(u.render(userID))
		if err != nil {
			return err
		}
		if err := s.writeAcct(ctx, tx, userID, ServerRulesType, content); err != nil {
			return err
		}
		tx.AfterCommit(func() { s.rules.invalidate(userID) })
		return nil
	})
}

func rulesContent(rs Ruleset) (json.RawMessage, error) {
	return json.Marshal(map[string]Ruleset{"global": rs})
}

// RulesContent implements API.
func (s *Server) RulesContent(ctx context.Context, userID string) (json.RawMessage, error) {
	u, err := loadUserRules(ctx, s.db.Reader(), userID, s.cfg.ThreadSubscriptionRules)
	if err != nil {
		return nil, err
	}
	return rulesContent(u.render(userID))
}

// rulesCache holds compiled rulesets by user. A generation counter
// keeps a load that raced with a change from caching the old rules.
type rulesCache struct {
	mu    sync.Mutex
	byID  map[string]*compiledRules // guarded by mu
	gen   atomic.Int64
	limit int
}

func newRulesCache() *rulesCache {
	return &rulesCache{byID: map[string]*compiledRules{}, limit: 50000}
}

func (c *rulesCache) invalidate(userID string) {
	c.gen.Add(1)
	c.mu.Lock()
	delete(c.byID, userID)
	c.mu.Unlock()
}

// rulesFor returns userID's compiled rules, loading and compiling them
// on a miss.
func (s *Server) rulesFor(ctx context.Context, userID string) (*compiledRules, error) {
	c := s.rules
	c.mu.Lock()
	cr := c.byID[userID]
	c.mu.Unlock()
	if cr != nil {
		return cr, nil
	}
	gen := c.gen.Load()
	u, err := loadUserRules(ctx, s.db.Reader(), userID, s.cfg.ThreadSubscriptionRules)
	if err != nil {
		return nil, err
	}
	cr = compile(u.render(userID))
	c.mu.Lock()
	if c.gen.Load() == gen {
		if len(c.byID) >= c.limit {
			clear(c.byID)
		}
		c.byID[userID] = cr
	}
	c.mu.Unlock()
	return cr, nil
}

// unreadJoins and unreadPast define unread from scratch: the read
// markers joined to the notifications, and the test that a notification
// is past them (an unthreaded marker, thread ID empty, reads every
// thread; a threaded one its own). Counts are read from push_unread,
// which holds exactly that (unread_summary.go); prune uses these to find
// the unread rows it deletes.
const unreadJoins = `
	FROM push_notifications n
	LEFT JOIN push_read ra ON ra.user_id = n.user_id AND ra.room_id = n.room_id AND ra.thread_id = ''
	LEFT JOIN push_read rt ON rt.user_id = n.user_id AND rt.room_id = n.room_id AND rt.thread_id = n.thread_id`
const unreadPast = `n.stream_pos > COALESCE(ra.read_pos, 0) AND n.stream_pos > COALESCE(rt.read_pos, 0)`

// unreadQuery reads a user's unread summary; the caller adds the rooms.
const unreadQuery = `SELECT room_id, thread_id, notifications, highlights FROM push_unread WHERE user_id = $1`

// UnreadCounts implements API.
// Spec: client-server-api, "Receiving notifications", and "GET
// /_matrix/client/v3/sync" (unread_notifications, unread_thread_notifications).
func (s *Server) UnreadCounts(ctx context.Context, userID string, roomIDs []string, roomPos, receiptPos int64) (map[string]RoomCounts, error) {
	out, _, err := s.UnreadCountsAt(ctx, userID, roomIDs, roomPos, receiptPos)
	return out, err
}

// UnreadCountsAt is UnreadCounts that also returns the room stream
// position the counts include: every notification of an event up to it
// is counted (the event consumer's committed position, read after the
// wait and before the counts). A caller that does not want to wait for
// the consumer passes roomPos 0 and learns how far the counts go.
func (s *Server) UnreadCountsAt(ctx context.Context, userID string, roomIDs []string, roomPos, receiptPos int64) (map[string]RoomCounts, int64, error) {
	out := map[string]RoomCounts{}
	if len(roomIDs) == 0 {
		return out, s.countedPos(), nil
	}
	s.waitCaughtUp(ctx, roomPos, receiptPos)
	counted := s.countedPos()
	const chunk = 400
	for start := 0; start < len(roomIDs); start += chunk {
		part := roomIDs[start:min(start+chunk, len(roomIDs))]
		args := []any{userID}
		var in strings.Builder
		for i, id := range part {
			if i > 0 {
				in.WriteString(", ")
			}
			args = append(args, id)
			fmt.Fprintf(&in, "$%d", len(args))
		}
		rows, err := s.db.Reader().Query(ctx, unreadQuery+` AND room_id IN (`+in.String()+`)`, args...)
		if err != nil {
			return nil, 0, err
		}
		for rows.Next() {
			var roomID, thread string
			var c Counts
			if err := rows.Scan(&roomID, &thread, &c.Notifications, &c.Highlights); err != nil {
				rows.Close()
				return nil, 0, err
			}
			addUnread(out, roomID, thread, c)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, 0, err
		}
	}
	return out, counted, nil
}

// totalUnread counts a user's unread notifications in every room, for
// the gateway's counts.unread.
func totalUnread(ctx context.Context, q storage.Querier, userID string) (int, error) {
	var n int
	err := q.QueryRow(ctx, `SELECT CAST(COALESCE(SUM(notifications), 0) AS BIGINT) FROM push_unread WHERE user_id = $1`, userID).Scan(&n)
	return n, err
}

// DeletePushersForDevices deletes the pushers the given devices created,
// and their queued notifications, inside the transaction that deletes
// the devices (clientapi.Deps.OnDevicesDeleted): logging out, deleting a
// device, a password change that logs other devices out, and
// deactivation all remove their pushers.
func DeletePushersForDevices(ctx context.Context, tx storage.Tx, userID string, deviceIDs []string) error {
	for _, deviceID := range deviceIDs {
		if _, err := tx.Exec(ctx, `DELETE FROM push_queue WHERE EXISTS (SELECT 1 FROM pushers p
			WHERE p.user_id = $1 AND p.device_id = $2 AND p.user_id = push_queue.user_id
			AND p.app_id = push_queue.app_id AND p.pushkey = push_queue.pushkey)`, userID, deviceID); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM pushers WHERE user_id = $1 AND device_id = $2`, userID, deviceID); err != nil {
			return err
		}
	}
	return nil
}
