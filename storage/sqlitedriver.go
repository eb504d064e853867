package storage

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"

	"github.com/mattn/go-sqlite3"
)

// maxCachedStatementArgs is the most arguments a statement may take and
// still be kept in its SQLite connection's statement cache. A statement
// with more is built from a long list (an IN list of up to 500 event IDs
// or rooms): its text, and so its cache entry, differs with the list's
// length, and its compiled program is 100–250 KiB. Kept in a 256-entry
// cache per connection, each length a new entry, such statements held
// ~10 MiB of the four readers' memory after one 500-room initial sync and
// were never released (docs/benchmarks.md, "Memory, part 4"); compiling
// one takes ~0.2 ms. The fixed statements of the hot paths take a handful
// of arguments, and the batched sync reads name at most 100 rooms per
// statement (roomserver's batchRooms): those come back with every large
// sync, and compiling the largest of them, a 100-term UNION ALL, takes
// ~2.5 ms, so they stay cached.
const maxCachedStatementArgs = 128

// sqliteConnector opens go-sqlite3 connections wrapped in sqliteConn.
type sqliteConnector struct {
	dsn    string
	driver *sqlite3.SQLiteDriver
	// init runs on every new connection, after the DSN's settings: the
	// PRAGMAs go-sqlite3 takes no DSN parameter for. Run per connection,
	// they hold on one that database/sql opens again after an error.
	init []string
}

func openSQLiteDB(dsn string, init ...string) *sql.DB {
	return sql.OpenDB(sqliteConnector{dsn: dsn, driver: &sqlite3.SQLiteDriver{}, init: init})
}

func (c sqliteConnector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := c.driver.Open(c.dsn)
	if err != nil {
		return nil, err
	}
	sc, ok := conn.(*sqlite3.SQLiteConn)
	if !ok {
		conn.Close()
		return nil, fmt.Errorf("storage: sqlite driver returned %T", conn)
	}
	for _, q := range c.init {
		if _, err := sc.ExecContext(ctx, q, nil); err != nil {
			sc.Close()
			return nil, fmt.Errorf("storage: %s: %w", q, err)
		}
	}
	return sqliteConn{sc}, nil
}

func (c sqliteConnector) Driver() driver.Driver { return c.driver }

// sqliteConn is a go-sqlite3 connection whose direct Query and Exec
// decline statements with more than maxCachedStatementArgs arguments
// (driver.ErrSkip): database/sql then prepares the statement with
// PrepareContext, which go-sqlite3 does not cache, runs it, and finalizes
// it when its rows are closed (Exec: at once). Every other method is
// go-sqlite3's.
type sqliteConn struct {
	*sqlite3.SQLiteConn
}

func (c sqliteConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	if len(args) > maxCachedStatementArgs {
		return nil, driver.ErrSkip
	}
	return c.SQLiteConn.QueryContext(ctx, query, args)
}

func (c sqliteConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	if len(args) > maxCachedStatementArgs {
		return nil, driver.ErrSkip
	}
	return c.SQLiteConn.ExecContext(ctx, query, args)
}

// The interfaces database/sql looks for; the legacy Queryer and Execer
// are go-sqlite3's, which database/sql uses only without the context
// forms.
var (
	_ driver.QueryerContext     = sqliteConn{}
	_ driver.ExecerContext      = sqliteConn{}
	_ driver.ConnPrepareContext = sqliteConn{}
	_ driver.ConnBeginTx        = sqliteConn{}
	_ driver.Pinger             = sqliteConn{}
)
