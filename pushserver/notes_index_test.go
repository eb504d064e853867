package pushserver

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestNotificationIndexes: push_notifications has one index keyed by
// user (each notification row's entry in such an index lands on its
// user's own leaf page, so a message to N members writes N leaf pages
// per such index: docs/benchmarks.md, "sendfan"), and every query on the
// table still reads it through an index: GET /notifications pages (both
// kinds) without a sort, the recount when a marker moves, the prune's
// unread sum and delete, and the send path's reads of the rows it has
// just written. SQLite: EXPLAIN QUERY PLAN names an index or the
// primary key for every step on the table, and no temporary b-tree for
// ORDER BY. PostgreSQL: with sequential scans discouraged (the test
// table is small, so the planner would rightly prefer one), EXPLAIN
// shows no sequential scan of the table and the page no Sort.
func TestNotificationIndexes(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newBareServer(t, db, time.Now)
		users := make([]string, 50)
		for i := range users {
			users[i] = fmt.Sprintf("@u%02d:x", i)
		}
		info := &roomInfo{names: map[string]string{}}
		err := db.Write(ctx, func(tx storage.Tx) error {
			for pos := int64(1); pos <= 40; pos++ {
				if _, err := s.writeNotifications(ctx, tx, benchNotes(users, fmt.Sprintf("!r%d:x", pos%3), pos, info), nil, pos); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}

		byUser, err := userKeyedIndexes(ctx, db)
		if err != nil {
			t.Fatal(err)
		}
		if len(byUser) != 1 {
			t.Errorf("push_notifications has %d indexes keyed by user_id, want 1: %v", len(byUser), byUser)
		}

		queries := []struct {
			name    string
			query   string
			args    []any
			ordered bool // must not sort
		}{
			{"GET /notifications", notificationsQuery(false), []any{"@u07:x", int64(30), 21}, true},
			{"GET /notifications?only=highlight", notificationsQuery(true), []any{"@u07:x", int64(1 << 62), 21}, true},
			{"recount", recountQuery, []any{"@u07:x", "!r1:x", mainThread}, false},
			{"prune sum", pruneUnreadQuery, []any{int64(10)}, false},
			{"prune delete", `DELETE FROM push_notifications WHERE ts < $1`, []any{int64(10)}, false},
			{"count new rows", countNotesQuery, []any{int64(100)}, false},
			{"last id", `SELECT COALESCE(MAX(id), 0) FROM push_notifications`, nil, false},
			{"pushers of new rows", `SELECT user_id, app_id, pushkey FROM pushers
				WHERE user_id IN (SELECT user_id FROM push_notifications WHERE id > $1)`, []any{int64(100)}, false},
		}
		err = db.Write(ctx, func(tx storage.Tx) error {
			if db.Engine() == storage.Postgres {
				if _, err := tx.Exec(ctx, `SET LOCAL enable_seqscan = off`); err != nil {
					return err
				}
			}
			for _, q := range queries {
				plan, err := explain(ctx, tx, db.Engine(), q.query, q.args...)
				if err != nil {
					return fmt.Errorf("%s: %w", q.name, err)
				}
				if bad := unindexedSteps(db.Engine(), plan, q.ordered); len(bad) > 0 {
					t.Errorf("%s: %v in the plan:\n%s", q.name, bad, strings.Join(plan, "\n"))
				} else {
					t.Logf("%s:\n%s", q.name, strings.Join(plan, "\n"))
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// userKeyedIndexes names push_notifications' indexes whose first column
// is user_id.
func userKeyedIndexes(ctx context.Context, db *storage.DB) ([]string, error) {
	query := `SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'push_notifications'
		AND sql LIKE '%push_notifications (user_id%'`
	if db.Engine() == storage.Postgres {
		// From the catalogs rather than pg_indexes, whose indexdef
		// (pg_get_indexdef) may be computed for indexes of other schemas
		// that tests running at once are dropping ("could not open
		// relation with OID").
		query = `SELECT c.relname FROM pg_index i
			JOIN pg_class c ON c.oid = i.indexrelid
			JOIN pg_class t ON t.oid = i.indrelid
			JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = i.indkey[0]
			WHERE t.relnamespace = current_schema()::regnamespace
			AND t.relname = 'push_notifications' AND a.attname = 'user_id'`
	}
	return storage.QueryColumn[string](ctx, db.Reader(), query)
}

// explain returns query's plan, one line per step.
func explain(ctx context.Context, tx storage.Tx, engine storage.Engine, query string, args ...any) ([]string, error) {
	prefix, col := "EXPLAIN ", 0
	if engine == storage.SQLite {
		prefix, col = "EXPLAIN QUERY PLAN ", 3
	}
	rows, err := tx.Query(ctx, prefix+query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return nil, err
	}
	var plan []string
	for rows.Next() {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return nil, err
		}
		plan = append(plan, fmt.Sprint(vals[col]))
	}
	return plan, rows.Err()
}

// unindexedSteps returns the steps of plan that read push_notifications
// without an index, and (if ordered) any sort.
func unindexedSteps(engine storage.Engine, plan []string, ordered bool) []string {
	var bad []string
	// The queries name push_notifications n, except countNotesQuery,
	// whose n is its materialized CTE of the new rows (a scan of those
	// is the point).
	materialized := slices.ContainsFunc(plan, func(step string) bool { return strings.HasPrefix(step, "MATERIALIZE") })
	for _, step := range plan {
		switch engine {
		case storage.SQLite:
			onTable := strings.Contains(step, "push_notifications") ||
				!materialized && (strings.HasPrefix(step, "SCAN n") || strings.HasPrefix(step, "SEARCH n "))
			if onTable && strings.HasPrefix(step, "SCAN") {
				bad = append(bad, step)
			}
			if ordered && strings.Contains(step, "TEMP B-TREE FOR ORDER BY") {
				bad = append(bad, step)
			}
		case storage.Postgres:
			if strings.Contains(step, "Seq Scan on push_notifications") {
				bad = append(bad, step)
			}
			if ordered && strings.Contains(strings.TrimSpace(step), "Sort") {
				bad = append(bad, step)
			}
		}
	}
	return bad
}
