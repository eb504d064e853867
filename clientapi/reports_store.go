package clientapi

import (
	"context"
	"database/sql"
	"io/fs"
	"strings"
	"unicode/utf8"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// The three report queues users fill (rooms_reports.go) and server
// administrators read and clear (reports_admin.go, `myelin reports`).
// Event and room reports share the table room_reports (event_id '' for a
// room); user reports have user_reports.

// ReportKind names a report queue.
type ReportKind string

const (
	// EventReports are reports about one event of a room.
	EventReports ReportKind = "event"
	// RoomReports are reports about a whole room.
	RoomReports ReportKind = "room"
	// UserReports are reports about a user.
	UserReports ReportKind = "user"
)

// maxReportPage caps one page of a report listing: each event report on
// a page costs the admin endpoint a read of its event and room.
const maxReportPage = 1000

// Report is one report, as administrators see it.
type Report struct {
	ID   int64
	Kind ReportKind
	// RoomID is the room of an event or room report.
	RoomID string
	// EventID is the event of an event report.
	EventID string
	// Sender is the sender of an event report's event, as recorded when
	// it was reported ("" for reports made before it was recorded).
	Sender string
	// TargetUserID is the reported user of a user report.
	TargetUserID string
	// Reporter is the user who made the report.
	Reporter string
	Reason   string
	// Score is the score an older client gave an event report (the spec
	// dropped it in v1.18); nil when none.
	Score      *int64
	ReceivedTS int64
}

// ReportQuery selects a page of one queue. The filters match user and
// room IDs that contain them (Synapse's admin API matches the same way);
// empty matches everything.
type ReportQuery struct {
	Kind ReportKind
	// Reporter filters on the reporting user's ID.
	Reporter string
	// RoomID filters event and room reports on their room.
	RoomID string
	// TargetUserID filters user reports on the reported user.
	TargetUserID string
	// Sender, unlike the others an exact user ID, filters event reports
	// on the sender of the reported event.
	Sender string
	// Forwards lists the oldest report first; by default the newest is.
	Forwards bool
	// From is the number of matching reports to skip.
	From int64
	// Limit is the page size, 1 to maxReportPage.
	Limit int64
}

// reportTable describes where a queue lives.
type reportTable struct {
	columns string // in Report's order for scanReport
	from    string // table and the queue's own condition
}

var reportTables = map[ReportKind]reportTable{
	EventReports: {
		columns: `report_id, room_id, event_id, event_sender, '', reporter, reason, score, received_ts`,
		from:    `room_reports WHERE event_id <> ''`,
	},
	RoomReports: {
		columns: `report_id, room_id, event_id, '', '', reporter, reason, score, received_ts`,
		from:    `room_reports WHERE event_id = ''`,
	},
	UserReports: {
		columns: `report_id, '', '', '', target_user_id, reporter, reason, NULL, received_ts`,
		from:    `user_reports WHERE 1 = 1`,
	},
}

func scanReport(row interface{ Scan(...any) error }, kind ReportKind) (Report, error) {
	rep := Report{Kind: kind}
	var score sql.NullInt64
	err := row.Scan(&rep.ID, &rep.RoomID, &rep.EventID, &rep.Sender, &rep.TargetUserID, &rep.Reporter, &rep.Reason, &score, &rep.ReceivedTS)
	if score.Valid {
		rep.Score = &score.Int64
	}
	return rep, err
}

// listReports returns one page of a queue and how many reports match
// the query's filters in all.
func listReports(ctx context.Context, db *storage.DB, q ReportQuery) ([]Report, int64, error) {
	table, ok := reportTables[q.Kind]
	if !ok {
		return nil, 0, mxerr.New(mxerr.InvalidParam, "unknown report kind %q", q.Kind)
	}
	if q.From < 0 || q.Limit < 1 || q.Limit > maxReportPage {
		return nil, 0, mxerr.New(mxerr.InvalidParam, "from must be at least 0 and limit between 1 and %d", maxReportPage)
	}
	for _, filter := range []string{q.Reporter, q.RoomID, q.TargetUserID, q.Sender} {
		// PostgreSQL refuses text that is not UTF-8 or holds NUL; no ID
		// does either.
		if !utf8.ValidString(filter) || strings.ContainsRune(filter, 0) {
			return nil, 0, mxerr.New(mxerr.InvalidParam, "the user and room filters must be UTF-8 without NUL")
		}
	}
	var args sqlArgs
	var where strings.Builder
	contains := func(column, value string) {
		if value == "" {
			return
		}
		// A byte substring, case-sensitive on both engines (LIKE is not:
		// SQLite folds ASCII case, and '%' and '_' would need escaping).
		if db.Engine() == storage.Postgres {
			where.WriteString(" AND strpos(" + column + ", " + args.add(value) + ") > 0")
		} else {
			where.WriteString(" AND instr(" + column + ", " + args.add(value) + ") > 0")
		}
	}
	contains("reporter", q.Reporter)
	if q.Kind == UserReports {
		contains("target_user_id", q.TargetUserID)
	} else {
		contains("room_id", q.RoomID)
	}
	if q.Kind == EventReports && q.Sender != "" {
		where.WriteString(" AND event_sender = " + args.add(q.Sender))
	}
	order := " ORDER BY report_id DESC"
	if q.Forwards {
		order = " ORDER BY report_id ASC"
	}
	var (
		reports []Report
		total   int64
	)
	// One read transaction, so the page and the total agree.
	err := db.Read(ctx, func(r storage.Querier) error {
		if err := r.QueryRow(ctx, `SELECT COUNT(*) FROM `+table.from+where.String(), args.list...).Scan(&total); err != nil {
			return err
		}
		pageArgs := append([]any(nil), args.list...)
		page := sqlArgs{list: pageArgs}
		query := `SELECT ` + table.columns + ` FROM ` + table.from + where.String() + order +
			` LIMIT ` + page.add(q.Limit) + ` OFFSET ` + page.add(q.From)
		rows, err := r.Query(ctx, query, page.list...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			rep, err := scanReport(rows, q.Kind)
			if err != nil {
				return err
			}
			reports = append(reports, rep)
		}
		return rows.Err()
	})
	return reports, total, err
}

// getReport returns one report of a queue; M_NOT_FOUND when the queue
// has no report id.
func getReport(ctx context.Context, q storage.Querier, kind ReportKind, id int64) (Report, error) {
	table, ok := reportTables[kind]
	if !ok {
		return Report{}, mxerr.New(mxerr.InvalidParam, "unknown report kind %q", kind)
	}
	rep, err := scanReport(q.QueryRow(ctx, `SELECT `+table.columns+` FROM `+table.from+` AND report_id = $1`, id), kind)
	if storage.IsNoRows(err) {
		return Report{}, mxerr.New(mxerr.NotFound, "no %s report %d", kind, id)
	}
	return rep, err
}

// deleteReport deletes one report of a queue; M_NOT_FOUND when the
// queue has no report id (an event report's ID does not delete a room
// report, nor the reverse).
func deleteReport(ctx context.Context, db *storage.DB, kind ReportKind, id int64) error {
	table, ok := reportTables[kind]
	if !ok {
		return mxerr.New(mxerr.InvalidParam, "unknown report kind %q", kind)
	}
	tableName, cond, _ := strings.Cut(table.from, " WHERE ")
	return db.Write(ctx, func(tx storage.Tx) error {
		res, err := tx.Exec(ctx, `DELETE FROM `+tableName+` WHERE `+cond+` AND report_id = $1`, id)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return mxerr.New(mxerr.NotFound, "no %s report %d", kind, id)
		}
		return nil
	})
}

// Reports lists one page of a report queue and the number of reports
// matching the query's filters; for `myelin reports list`.
func (a *Accounts) Reports(ctx context.Context, q ReportQuery) ([]Report, int64, error) {
	return listReports(ctx, a.db, q)
}

// Report returns one report; for `myelin reports show`.
func (a *Accounts) Report(ctx context.Context, kind ReportKind, id int64) (Report, error) {
	return getReport(ctx, a.db.Reader(), kind, id)
}

// DeleteReport deletes one report (the administrator has dealt with
// it); for `myelin reports delete`.
func (a *Accounts) DeleteReport(ctx context.Context, kind ReportKind, id int64) error {
	return deleteReport(ctx, a.db, kind, id)
}

// MigrateReportTables brings the room endpoints' tables, the report
// queues among them, up to date without starting a server: for the
// `myelin reports` commands on a database no server has run on yet.
func (a *Accounts) MigrateReportTables(ctx context.Context) error {
	sub, err := fs.Sub(roomMigrations, "rooms_migrations")
	if err != nil {
		return err
	}
	return a.db.Migrate(ctx, roomsComponent, sub)
}
