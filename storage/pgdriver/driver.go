// Package pgdriver is the database/sql driver Myelin uses for PostgreSQL:
// a small driver written over pgx's connection layer (pgconn), without
// pgx's type system (pgtype) and its database/sql adapter (stdlib).
//
// Why: pgtype and stdlib are most of pgx's code, and a Go binary's loaded
// sections are resident in full whatever runs, so every Myelin server paid
// for them at idle, SQLite servers included (docs/benchmarks.md, "Memory,
// part 3"). Myelin's storage needs few types: integers, booleans, text,
// bytea, JSON held as text, and floats.
//
// Contract, as database/sql expects it:
//   - Arguments arrive converted by database/sql's default converter (nil,
//     int64, float64, bool, []byte, string, time.Time; a driver.Valuer is
//     called first). They are sent in text format, except that a []byte or
//     string bound to a bytea parameter is sent as raw binary bytes, so
//     bytes need no escaping and text needs no bytea syntax.
//   - Results of int2/int4/int8 arrive as int64, bool as bool, float4/float8
//     as float64, bytea as []byte (valid until the next row, as database/sql
//     allows; it copies what it keeps), NULL as nil, and every other type
//     (text, varchar, json, jsonb, numeric, …) as its text form in a string,
//     which database/sql converts to the scan target (numeric "12" scans
//     into an int64).
//   - Every statement with arguments, and every query, runs through the
//     extended protocol with a per-connection cache of prepared statements
//     keyed by SQL text (LRU, stmtCacheSize entries), as pgx does by
//     default, so each text is parsed and planned once per connection. An
//     Exec without arguments uses the simple protocol, which allows several
//     statements in one text (migrations).
//   - A statement whose cached plan the server rejects after a schema change
//     (SQLSTATE 0A000) is dropped from the cache; outside a transaction it is
//     prepared again and run once more, inside one the error is returned (the
//     transaction is aborted anyway).
//   - Server errors are *pgconn.PgError (errors.As finds them), so callers
//     test SQLSTATEs (23505 unique violation, 40001 serialization failure).
//   - A context cancelled during a statement cancels it on the server and
//     closes the connection (pgconn's behaviour); database/sql then drops the
//     connection from its pool (ResetSession, IsValid). An error that pgconn
//     reports as safe to retry (nothing was sent) becomes driver.ErrBadConn,
//     so database/sql retries on another connection.
//   - COMMIT of a transaction the server has already aborted is an error
//     (ErrCommitRolledBack), never a silent success.
//
// A connection is used by one goroutine at a time (database/sql guarantees
// it); its fields are not guarded.
package pgdriver

import (
	"container/list"
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// DriverName is the name the driver is registered under with database/sql.
const DriverName = "myelin-postgres"

// stmtCacheSize is how many prepared statements each connection keeps, as
// pgx's default statement cache. Myelin has a few hundred distinct query
// texts; statements with variable-length IN lists fall out first.
const stmtCacheSize = 512

// closeTimeout bounds how long closing a connection waits to say goodbye
// to the server.
const closeTimeout = 5 * time.Second

// ErrCommitRolledBack is returned by Commit when the server rolled the
// transaction back instead (it had failed earlier).
var ErrCommitRolledBack = errors.New("pgdriver: commit unexpectedly resulted in rollback")

func init() { sql.Register(DriverName, Driver{}) }

// Driver is the database/sql driver. Names are libpq connection strings
// (URL or key=value), as pgconn.ParseConfig reads them.
type Driver struct{}

var (
	_ driver.Driver        = Driver{}
	_ driver.DriverContext = Driver{}
)

// Open opens one connection.
func (d Driver) Open(name string) (driver.Conn, error) {
	c, err := d.OpenConnector(name)
	if err != nil {
		return nil, err
	}
	return c.Connect(context.Background())
}

// OpenConnector parses name once for all the pool's connections.
func (Driver) OpenConnector(name string) (driver.Connector, error) {
	cfg, err := pgconn.ParseConfig(name)
	if err != nil {
		return nil, err
	}
	return &Connector{cfg: cfg}, nil
}

// Connector opens connections with one parsed configuration.
type Connector struct {
	cfg *pgconn.Config
}

// NewConnector returns a connector for a libpq connection string, for
// sql.OpenDB.
func NewConnector(connString string) (*Connector, error) {
	cfg, err := pgconn.ParseConfig(connString)
	if err != nil {
		return nil, err
	}
	return &Connector{cfg: cfg}, nil
}

var _ driver.Connector = (*Connector)(nil)

// Connect opens a connection.
func (c *Connector) Connect(ctx context.Context) (driver.Conn, error) {
	pg, err := pgconn.ConnectConfig(ctx, c.cfg)
	if err != nil {
		return nil, err
	}
	return &conn{pg: pg, stmts: map[string]*list.Element{}, lru: list.New()}, nil
}

// Driver returns the driver.
func (c *Connector) Driver() driver.Driver { return Driver{} }

type conn struct {
	pg *pgconn.PgConn
	// stmts maps SQL text to its element in lru, whose Value is the
	// *pgconn.StatementDescription; the front is the most recently used.
	stmts    map[string]*list.Element
	lru      *list.List
	nextStmt uint64
}

var (
	_ driver.Conn               = (*conn)(nil)
	_ driver.ConnBeginTx        = (*conn)(nil)
	_ driver.ExecerContext      = (*conn)(nil)
	_ driver.QueryerContext     = (*conn)(nil)
	_ driver.ConnPrepareContext = (*conn)(nil)
	_ driver.Pinger             = (*conn)(nil)
	_ driver.SessionResetter    = (*conn)(nil)
	_ driver.Validator          = (*conn)(nil)
)

func (c *conn) Prepare(query string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), query)
}

// PrepareContext returns a statement that runs through the connection's
// cache: database/sql's prepared statements and the cache share one
// server-side statement per text.
func (c *conn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	if _, err := c.prepare(ctx, query); err != nil {
		return nil, c.wrapErr(err)
	}
	return &stmt{c: c, query: query}, nil
}

func (c *conn) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	return c.pg.Close(ctx)
}

func (c *conn) Begin() (driver.Tx, error) {
	return c.BeginTx(context.Background(), driver.TxOptions{})
}

// BeginTx starts a transaction with the isolation level and access mode
// database/sql asks for.
func (c *conn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	begin := "BEGIN"
	switch sql.IsolationLevel(opts.Isolation) {
	case sql.LevelDefault:
	case sql.LevelReadUncommitted:
		begin += " ISOLATION LEVEL READ UNCOMMITTED"
	case sql.LevelReadCommitted:
		begin += " ISOLATION LEVEL READ COMMITTED"
	case sql.LevelRepeatableRead, sql.LevelSnapshot:
		begin += " ISOLATION LEVEL REPEATABLE READ"
	case sql.LevelSerializable:
		begin += " ISOLATION LEVEL SERIALIZABLE"
	default:
		return nil, fmt.Errorf("pgdriver: unsupported isolation level %v", sql.IsolationLevel(opts.Isolation))
	}
	if opts.ReadOnly {
		begin += " READ ONLY"
	}
	if _, err := c.simpleExec(ctx, begin); err != nil {
		return nil, c.wrapErr(err)
	}
	return tx{c: c}, nil
}

type tx struct{ c *conn }

func (t tx) Commit() error {
	tag, err := t.c.simpleExec(context.Background(), "COMMIT")
	if err != nil {
		return err
	}
	if tag.String() == "ROLLBACK" {
		return ErrCommitRolledBack
	}
	return nil
}

func (t tx) Rollback() error {
	if t.c.pg.IsClosed() {
		return driver.ErrBadConn
	}
	_, err := t.c.simpleExec(context.Background(), "ROLLBACK")
	return err
}

// simpleExec runs sql (possibly several statements) with the simple
// protocol and returns the last statement's command tag.
func (c *conn) simpleExec(ctx context.Context, sql string) (pgconn.CommandTag, error) {
	results, err := c.pg.Exec(ctx, sql).ReadAll()
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	if len(results) == 0 {
		return pgconn.CommandTag{}, nil
	}
	return results[len(results)-1].CommandTag, nil
}

func (c *conn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	if len(args) == 0 {
		tag, err := c.simpleExec(ctx, query)
		if err != nil {
			return nil, c.wrapErr(err)
		}
		return driver.RowsAffected(tag.RowsAffected()), nil
	}
	exec := func() (pgconn.CommandTag, error) {
		rr, err := c.runOnce(ctx, query, args)
		if err != nil {
			return pgconn.CommandTag{}, err
		}
		return rr.Close()
	}
	tag, err := exec()
	if err != nil && c.retryStale(query, err) {
		tag, err = exec()
	}
	if err != nil {
		return nil, c.wrapErr(err)
	}
	return driver.RowsAffected(tag.RowsAffected()), nil
}

func (c *conn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	rr, err := c.runOnce(ctx, query, args)
	if err != nil && c.retryStale(query, err) {
		rr, err = c.runOnce(ctx, query, args)
	}
	if err != nil {
		return nil, c.wrapErr(err)
	}
	return &rows{c: c, query: query, rr: rr}, nil
}

// retryStale reports whether a statement that failed with err should run
// once more: its cached plan went stale (it is dropped from the cache) and
// no transaction is open, so the failed attempt changed nothing.
func (c *conn) retryStale(query string, err error) bool {
	return c.forgetIfStale(query, err) && c.pg.TxStatus() == 'I'
}

// runOnce executes the statement through the cache. For a statement with
// result columns it reads up to the first row, so an error the server
// reports before any row (a bad argument, a stale plan) is returned here
// rather than from the first Next.
func (c *conn) runOnce(ctx context.Context, query string, args []driver.NamedValue) (*pgconn.ResultReader, error) {
	sd, err := c.prepare(ctx, query)
	if err != nil {
		return nil, err
	}
	if len(args) != len(sd.ParamOIDs) {
		return nil, fmt.Errorf("pgdriver: statement has %d parameters, %d arguments given", len(sd.ParamOIDs), len(args))
	}
	values, formats, err := encodeParams(sd.ParamOIDs, args)
	if err != nil {
		return nil, err
	}
	rr := c.pg.ExecStatement(ctx, sd, values, formats, resultFormats(sd.Fields))
	if len(sd.Fields) > 0 && rr.FieldDescriptions() == nil {
		// pgconn fills the field descriptions on the first row or on
		// CommandComplete; neither came, so the command ended in an error.
		if _, err := rr.Close(); err != nil {
			return nil, err
		}
		return nil, errors.New("pgdriver: statement ended without a result")
	}
	return rr, nil
}

// prepare returns the statement description for query, preparing it on
// the server when it is not cached.
func (c *conn) prepare(ctx context.Context, query string) (*pgconn.StatementDescription, error) {
	if el, ok := c.stmts[query]; ok {
		c.lru.MoveToFront(el)
		return el.Value.(*pgconn.StatementDescription), nil
	}
	if c.lru.Len() >= stmtCacheSize {
		oldest := c.lru.Back()
		sd := oldest.Value.(*pgconn.StatementDescription)
		if err := c.pg.Deallocate(ctx, sd.Name); err != nil {
			return nil, err
		}
		c.lru.Remove(oldest)
		delete(c.stmts, sd.SQL)
	}
	c.nextStmt++
	name := "myelin_" + strconv.FormatUint(c.nextStmt, 10)
	sd, err := c.pg.Prepare(ctx, name, query, nil)
	if err != nil {
		return nil, err
	}
	c.stmts[query] = c.lru.PushFront(sd)
	return sd, nil
}

// forgetIfStale drops query's cached statement when err says its plan no
// longer fits the schema, and reports whether it did.
func (c *conn) forgetIfStale(query string, err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "0A000" {
		return false
	}
	el, ok := c.stmts[query]
	if !ok {
		return false
	}
	sd := el.Value.(*pgconn.StatementDescription)
	c.lru.Remove(el)
	delete(c.stmts, query)
	// Close protocol message: allowed even in an aborted transaction.
	_ = c.pg.Deallocate(context.Background(), sd.Name)
	return true
}

// wrapErr turns an error after which nothing reached the server into
// driver.ErrBadConn, so database/sql retries on another connection.
func (c *conn) wrapErr(err error) error {
	if pgconn.SafeToRetry(err) && c.pg.IsClosed() {
		return driver.ErrBadConn
	}
	return err
}

func (c *conn) Ping(ctx context.Context) error {
	if c.pg.IsClosed() {
		return driver.ErrBadConn
	}
	if err := c.pg.Ping(ctx); err != nil {
		if c.pg.IsClosed() {
			return driver.ErrBadConn
		}
		return err
	}
	return nil
}

// ResetSession refuses a connection that was closed (a cancelled
// statement, a network error) or that is still inside a transaction.
func (c *conn) ResetSession(context.Context) error {
	if !c.IsValid() {
		return driver.ErrBadConn
	}
	return nil
}

func (c *conn) IsValid() bool { return !c.pg.IsClosed() && c.pg.TxStatus() == 'I' }

type stmt struct {
	c     *conn
	query string
}

var (
	_ driver.StmtExecContext  = (*stmt)(nil)
	_ driver.StmtQueryContext = (*stmt)(nil)
)

func (s *stmt) Close() error { return nil }

// NumInput is -1: database/sql leaves the count to the server's check.
func (s *stmt) NumInput() int { return -1 }

func (s *stmt) Exec(args []driver.Value) (driver.Result, error) {
	return s.c.ExecContext(context.Background(), s.query, namedValues(args))
}

func (s *stmt) Query(args []driver.Value) (driver.Rows, error) {
	return s.c.QueryContext(context.Background(), s.query, namedValues(args))
}

func (s *stmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	return s.c.ExecContext(ctx, s.query, args)
}

func (s *stmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	return s.c.QueryContext(ctx, s.query, args)
}

func namedValues(args []driver.Value) []driver.NamedValue {
	out := make([]driver.NamedValue, len(args))
	for i, v := range args {
		out[i] = driver.NamedValue{Ordinal: i + 1, Value: v}
	}
	return out
}

type rows struct {
	c       *conn
	query   string
	rr      *pgconn.ResultReader
	columns []string
	done    bool
}

var _ driver.RowsColumnTypeDatabaseTypeName = (*rows)(nil)

func (r *rows) Columns() []string {
	if r.columns == nil {
		fields := r.rr.FieldDescriptions()
		r.columns = make([]string, len(fields))
		for i, f := range fields {
			r.columns[i] = f.Name
		}
	}
	return r.columns
}

// ColumnTypeDatabaseTypeName names a column's type by its OID for the
// types the driver decodes natively, and "" for the others.
func (r *rows) ColumnTypeDatabaseTypeName(i int) string {
	switch r.rr.FieldDescriptions()[i].DataTypeOID {
	case oidInt2:
		return "INT2"
	case oidInt4:
		return "INT4"
	case oidInt8:
		return "INT8"
	case oidBool:
		return "BOOL"
	case oidBytea:
		return "BYTEA"
	case oidFloat4:
		return "FLOAT4"
	case oidFloat8:
		return "FLOAT8"
	case oidText:
		return "TEXT"
	}
	return ""
}

func (r *rows) Close() error {
	if r.done {
		return nil
	}
	r.done = true
	_, err := r.rr.Close()
	if err != nil {
		r.c.forgetIfStale(r.query, err)
	}
	return err
}

func (r *rows) Next(dest []driver.Value) error {
	if r.done {
		return io.EOF
	}
	if !r.rr.NextRow() {
		r.done = true
		if _, err := r.rr.Close(); err != nil {
			r.c.forgetIfStale(r.query, err)
			return err
		}
		return io.EOF
	}
	fields := r.rr.FieldDescriptions()
	for i, raw := range r.rr.Values() {
		v, err := decodeValue(fields[i], raw)
		if err != nil {
			return fmt.Errorf("pgdriver: column %q: %w", fields[i].Name, err)
		}
		dest[i] = v
	}
	return nil
}
