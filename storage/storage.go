package storage

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/mattn/go-sqlite3"

	"github.com/myelin-chat/myelin/storage/pgdriver"
)

// Engine names a database engine.
type Engine string

const (
	SQLite   Engine = "sqlite"
	Postgres Engine = "postgres"
)

// stmtCacheSize is how many prepared statements each SQLite connection
// keeps. The roomserver, sync and client API together use a few hundred
// distinct texts; the hot paths use a few dozen per connection.
const stmtCacheSize = 256

// sqliteCacheKiB is the SQLite writer's page cache (PRAGMA cache_size, in
// KiB); the readers have sqliteReaderCacheKiB. In WAL mode a
// reader's cache is emptied whenever another connection has committed
// since its last transaction, so only the writer's cache stays warm, and
// a page it misses is read back from the kernel's page cache (one pread,
// no disk I/O for a recently used database). With 16 MiB the writer's
// cache was SQLite's largest allocation after bench/run.sh's scenarios
// (14 MiB of SQLite allocations against 8.5 MiB with 4 MiB; the readers'
// size made no difference), and the send path's server CPU per message
// moved within run-to-run noise: see docs/benchmarks.md, "SQLite page
// caches sized to the load".
const sqliteCacheKiB = 4000

// sqliteReaderCacheKiB is each reader connection's page cache. A reader's
// cache survives only until another connection commits, so it serves the
// pages one read transaction (or a run of them with no write between)
// reads again: the B-tree's upper levels. A 500-room initial sync is a
// long run of reads with no commit, which let every reader's cache fill to
// the 4 MB the readers had before; glibc kept what SQLite freed (its
// arenas grew from ~13 to ~30 MB during that sync). With 1 MB the process's
// peak was 10–20 MB lower and that sync's server CPU did not move
// measurably (docs/benchmarks.md, "Default soft memory limit").
const sqliteReaderCacheKiB = 1000

// Options says which database to open.
type Options struct {
	Engine Engine
	// SQLitePath is the database file (SQLite only). Its directory is created.
	SQLitePath string
	// PostgresURL is a libpq-style connection string (PostgreSQL only).
	PostgresURL string
	// MaxOpenConns bounds the connection pool (readers on SQLite). 0 means a default.
	MaxOpenConns int
}

// Querier runs SQL written in the common dialect (see the package doc).
type Querier interface {
	Exec(ctx context.Context, query string, args ...any) (sql.Result, error)
	Query(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRow(ctx context.Context, query string, args ...any) *sql.Row
}

// Tx is a write transaction.
type Tx interface {
	Querier
	// AfterCommit registers fn to run after the transaction commits. It does
	// not run if the transaction (or this function's savepoint) rolls back.
	// Hooks run in registration order on the goroutine that called Write,
	// before Write returns.
	AfterCommit(fn func())
	// OnCommit registers fn to run right after the transaction commits,
	// on the goroutine that committed it, before any write it holds is
	// acknowledged and before every AfterCommit hook. On SQLite that is
	// the shared writer, which runs a batch's hooks in the order its
	// writes ran, so an in-memory cache updated here follows the commits
	// in order, however late each caller's goroutine wakes. fn must be
	// quick and must not block, Read or Write. It does not run if the
	// transaction (or this function's savepoint) rolls back.
	OnCommit(fn func())
}

// DB is an open database.
type DB struct {
	engine Engine
	// reader serves Read and Reader. On PostgreSQL it is also the writer pool.
	reader *sql.DB
	// writer is SQLite's single write connection; nil on PostgreSQL.
	writer  *sql.DB
	rewrite func(string) string

	queue     chan *writeRequest // SQLite group commit queue
	closeOnce sync.Once
	// closeMu is held shared by a Write queueing its request and
	// exclusively by Close while it closes closed.
	closeMu sync.RWMutex
	closed  chan struct{}
	// writerWG counts the SQLite writer's goroutine and its checkpointer's.
	writerWG sync.WaitGroup

	// commits counts the SQLite writer's successful COMMITs (CommitCount):
	// tests and benchmarks use it to show that group commit shares one
	// COMMIT among many writes.
	commits atomic.Int64
	// committed tells checkpointLoop (groupcommit.go) that the SQLite
	// writer has committed; one slot: the writer never waits on it.
	committed chan struct{}
	// idleCheckpoints counts the WAL checkpoints run after an idle spell
	// (groupcommit.go); tests read it.
	idleCheckpoints atomic.Int64
	// busyCheckpoints counts the WAL checkpoints run under load
	// (checkpointBusy, groupcommit.go); tests read it.
	busyCheckpoints atomic.Int64
	// walRestarts counts the commits that held restartWAL's writes and
	// nothing else (WALRestarts).
	walRestarts atomic.Int64
	// beforeCheckpoint, when set (by tests, before the first write), runs
	// in each checkpoint of checkpointLoop's (idle or busy) once it holds
	// its connection and has found the WAL's pages over its threshold.
	beforeCheckpoint func()
	// intents are the writes announced to the SQLite writer (intent.go).
	intents intents
	// answered is how many writes the SQLite writer's last commit
	// answered, and answeredAt when (intent.go); the writer's own.
	answered   int
	answeredAt time.Time
	holdTimes  holdTimes
	// commitTime is the SQLite writer's recent COMMIT duration (a moving
	// average of 1/8 weight over the COMMITs that succeeded; 0 until
	// one has), which bounds a commit's hold (intent.go, timeCommit);
	// the writer's own.
	commitTime time.Duration
}

// Open opens (and for SQLite creates) the database.
func Open(ctx context.Context, opts Options) (*DB, error) {
	switch opts.Engine {
	case SQLite, "":
		return openSQLite(ctx, opts)
	case Postgres:
		return openPostgres(ctx, opts)
	default:
		return nil, fmt.Errorf("storage: unknown engine %q (want %q or %q)", opts.Engine, SQLite, Postgres)
	}
}

func openSQLite(ctx context.Context, opts Options) (*DB, error) {
	if opts.SQLitePath == "" {
		return nil, errors.New("storage: sqlite path is empty")
	}
	if dir := filepath.Dir(opts.SQLitePath); dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("storage: creating %s: %w", dir, err)
		}
	}
	// synchronous=FULL: in WAL mode every commit fsyncs the WAL, so an
	// acknowledged write survives power loss, not only a process crash.
	common := url.Values{}
	common.Set("_journal_mode", "WAL")
	common.Set("_synchronous", "FULL")
	common.Set("_busy_timeout", "10000")
	common.Set("_foreign_keys", "1")
	common.Set("_cache_size", strconv.Itoa(-sqliteCacheKiB)) // negative: KiB, not pages
	// Prepared statements are cached per connection (the driver keeps an
	// LRU keyed by query text, reset and unbound between uses), so a
	// query's SQL is parsed and planned once per connection instead of on
	// every call: queries are a small fixed set of constants. Statements
	// built from a list of more than maxCachedStatementArgs elements are
	// not cached (sqlitedriver.go).
	// (On PostgreSQL, pgdriver caches prepared statements per connection,
	// so both engines parse each query text once.)
	common.Set("_stmt_cache_size", strconv.Itoa(stmtCacheSize))

	wq := url.Values{}
	for k, v := range common {
		wq[k] = v
	}
	wq.Set("_txlock", "immediate")
	// The writer's WAL appends are gathered into one write per commit
	// (walvfs.go); readers and the checkpointer, which only read frames a
	// commit has synced, stay on the default VFS.
	vfs, err := registerWALVFS()
	if err != nil {
		return nil, err
	}
	if vfs != "" {
		wq.Set("vfs", vfs)
	}
	writer := openSQLiteDB("file:"+opts.SQLitePath+"?"+wq.Encode(), "PRAGMA wal_autocheckpoint = "+strconv.Itoa(walAutocheckpointPages))
	writer.SetMaxOpenConns(1)
	writer.SetMaxIdleConns(1)
	writer.SetConnMaxLifetime(0)
	writer.SetConnMaxIdleTime(0)
	if err := writer.PingContext(ctx); err != nil {
		writer.Close()
		return nil, fmt.Errorf("storage: opening sqlite database %s: %w", opts.SQLitePath, err)
	}
	// The VFS holds a commit's WAL frames back until SQLite syncs the WAL,
	// which makes a commit visible to other connections only after that
	// sync when synchronous is FULL or EXTRA (walvfs.go).
	var syncLevel int
	if err := writer.QueryRowContext(ctx, "PRAGMA synchronous").Scan(&syncLevel); err != nil || syncLevel < 2 {
		writer.Close()
		return nil, fmt.Errorf("storage: opening sqlite database %s: the writer needs synchronous=FULL, has %d (%v)", opts.SQLitePath, syncLevel, err)
	}
	// The row the idle checkpointer rewrites to restart the WAL
	// (groupcommit.go, restartWAL). Storage's own, like myelin_schema.
	if _, err := writer.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS myelin_wal_restart (id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER NOT NULL)`); err != nil {
		writer.Close()
		return nil, fmt.Errorf("storage: opening sqlite database %s: %w", opts.SQLitePath, err)
	}

	rq := url.Values{}
	for k, v := range common {
		rq[k] = v
	}
	rq.Set("_query_only", "1")
	rq.Set("_cache_size", strconv.Itoa(-sqliteReaderCacheKiB))
	reader := openSQLiteDB("file:" + opts.SQLitePath + "?" + rq.Encode())
	n := opts.MaxOpenConns
	if n <= 0 {
		n = max(4, 2*runtime.NumCPU())
	}
	reader.SetMaxOpenConns(n)
	reader.SetMaxIdleConns(n)

	db := &DB{
		engine:    SQLite,
		reader:    reader,
		writer:    writer,
		rewrite:   newRewriter(rewriteForSQLite),
		queue:     make(chan *writeRequest, 1024),
		closed:    make(chan struct{}),
		committed: make(chan struct{}, 1),
		intents:   intents{gone: make(chan struct{}, 1)},
		holdTimes: holdTimes{hold: commitHold, fresh: intentFresh, window: returnWindow},
	}
	db.writerWG.Add(2)
	go db.groupCommitLoop()
	go db.checkpointLoop()
	return db, nil
}

func openPostgres(ctx context.Context, opts Options) (*DB, error) {
	if opts.PostgresURL == "" {
		return nil, errors.New("storage: postgres connection string is empty")
	}
	connector, err := pgdriver.NewConnector(opts.PostgresURL)
	if err != nil {
		return nil, fmt.Errorf("storage: opening postgres: %w", err)
	}
	// pgdriver, not pgx's stdlib adapter: the same connection layer
	// without pgx's type system, ~2.6 MiB less resident in every binary
	// (docs/benchmarks.md, "Memory, part 3"). Like pgx, it caches
	// prepared statements per connection.
	pool := sql.OpenDB(connector)
	n := opts.MaxOpenConns
	if n <= 0 {
		n = 20
	}
	pool.SetMaxOpenConns(n)
	pool.SetMaxIdleConns(n)
	if err := pool.PingContext(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("storage: connecting to postgres: %w", err)
	}
	return &DB{
		engine:  Postgres,
		reader:  pool,
		rewrite: func(q string) string { return q },
		closed:  make(chan struct{}),
	}, nil
}

// CommitCount reports how many COMMITs the SQLite group-commit writer has
// done (each is one fsync); always 0 on PostgreSQL. Benchmarks divide
// writes by it to show how many share a commit.
func (db *DB) CommitCount() int64 { return db.commits.Load() }

// WALRestarts reports how many of CommitCount's commits held nothing
// but writes of the idle checkpointer's own (groupcommit.go,
// restartWAL), which may come at any idle moment; tests that count the
// commits of their writes subtract it from CommitCount.
func (db *DB) WALRestarts() int64 { return db.walRestarts.Load() }

// Engine reports which engine the database runs on.
func (db *DB) Engine() Engine { return db.engine }

// Close waits for queued writes to finish and closes the database.
func (db *DB) Close() error {
	var err error
	db.closeOnce.Do(func() {
		db.closeMu.Lock()
		close(db.closed)
		db.closeMu.Unlock()
		db.writerWG.Wait()
		if db.writer != nil {
			// Fold the WAL back into the main file so a clean shutdown
			// leaves one self-contained database file.
			_, _ = db.writer.Exec("PRAGMA wal_checkpoint(TRUNCATE)")
			err = errors.Join(err, db.writer.Close())
		}
		err = errors.Join(err, db.reader.Close())
	})
	return err
}

// ReleaseStartupCache empties the SQLite writer's page cache once
// start-up is done (PRAGMA shrink_memory: SQLite frees the cached pages
// no transaction holds). On a first start the migrations have just
// created and written every table and index, so that cache holds the
// whole fresh database (~1 MB), pages an idle server does not read
// again; later writes read the pages they need back from the kernel's
// page cache and refill the cache up to its size (sqliteCacheKiB), as
// they would after any restart. Call it after the components are built
// and before serving; it takes the writer's one connection, so it waits
// for a write in flight. Readers' caches are left alone: a reader's cache
// is dropped by the next commit anyway (see sqliteReaderCacheKiB).
// PostgreSQL: nothing to do. What SQLite frees stays in the C library's
// malloc arenas until they are trimmed (cmd/myelin calls malloc_trim).
func (db *DB) ReleaseStartupCache(ctx context.Context) error {
	if db.engine != SQLite {
		return nil
	}
	if _, err := db.writer.ExecContext(ctx, "PRAGMA shrink_memory"); err != nil {
		return fmt.Errorf("storage: releasing the writer's page cache: %w", err)
	}
	return nil
}

// ErrClosed is returned by Write after Close.
var ErrClosed = errors.New("storage: database is closed")

// Reader returns a Querier on the read pool, for single statements that
// need no snapshot across statements.
func (db *DB) Reader() Querier { return poolQuerier{db: db.reader, rewrite: db.rewrite} }

// Read runs fn in a read-only transaction: every statement sees the same
// snapshot.
func (db *DB) Read(ctx context.Context, fn func(q Querier) error) error {
	opts := &sql.TxOptions{}
	if db.engine == Postgres {
		// PostgreSQL's default, READ COMMITTED, takes a new snapshot per
		// statement; REPEATABLE READ keeps one for the transaction, as a
		// SQLite read transaction does.
		opts = &sql.TxOptions{ReadOnly: true, Isolation: sql.LevelRepeatableRead}
	}
	tx, err := db.reader.BeginTx(ctx, opts)
	if err != nil {
		return fmt.Errorf("storage: begin read: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // read-only; nothing to keep
	return fn(txQuerier{tx: tx, rewrite: db.rewrite})
}

// Write runs fn in a write transaction and returns once the transaction has
// committed durably (or fn's work has been rolled back). If fn returns an
// error, none of its writes are kept and that error is returned.
func (db *DB) Write(ctx context.Context, fn func(tx Tx) error) error {
	if db.engine == SQLite {
		return db.enqueueWrite(ctx, fn)
	}
	return db.writePostgres(ctx, fn)
}

func (db *DB) writePostgres(ctx context.Context, fn func(tx Tx) error) error {
	select {
	case <-db.closed:
		return ErrClosed
	default:
	}
	sqlTx, err := db.reader.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("storage: begin write: %w", err)
	}
	tx := &writeTx{txQuerier: txQuerier{tx: sqlTx, rewrite: db.rewrite}}
	if err := callWrite(fn, tx); err != nil {
		_ = sqlTx.Rollback()
		return err
	}
	if err := sqlTx.Commit(); err != nil {
		return fmt.Errorf("storage: commit: %w", err)
	}
	tx.runOnCommit()
	tx.runAfterCommit()
	return nil
}

// callWrite runs fn, turning a panic into an error so one bad function
// cannot take the writer (and everyone queued behind it) down.
func callWrite(fn func(Tx) error, tx Tx) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("storage: panic in write function: %v", v)
		}
	}()
	return fn(tx)
}

// IsUniqueViolation reports whether err is a unique or primary-key
// constraint violation on either engine.
func IsUniqueViolation(err error) bool {
	var sqliteErr sqlite3.Error
	if errors.As(err, &sqliteErr) {
		return sqliteErr.ExtendedCode == sqlite3.ErrConstraintUnique ||
			sqliteErr.ExtendedCode == sqlite3.ErrConstraintPrimaryKey
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == "23505"
	}
	return false
}

// IsNoRows reports whether err is sql.ErrNoRows.
func IsNoRows(err error) bool { return errors.Is(err, sql.ErrNoRows) }

// QueryColumn runs a query that selects one column and returns its values
// in row order (nil when there are none).
func QueryColumn[T any](ctx context.Context, q Querier, query string, args ...any) ([]T, error) {
	rows, err := q.Query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		var v T
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

type poolQuerier struct {
	db      *sql.DB
	rewrite func(string) string
}

func (p poolQuerier) Exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	return p.db.ExecContext(ctx, p.rewrite(q), args...)
}

func (p poolQuerier) Query(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	return p.db.QueryContext(ctx, p.rewrite(q), args...)
}

func (p poolQuerier) QueryRow(ctx context.Context, q string, args ...any) *sql.Row {
	return p.db.QueryRowContext(ctx, p.rewrite(q), args...)
}

// sqlRunner is what txQuerier runs statements on: a *sql.Tx, or the
// SQLite writer's *sql.Conn inside the transaction it began
// (commitBatch).
type sqlRunner interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

type txQuerier struct {
	tx      sqlRunner
	rewrite func(string) string
	// uncancellable runs statements without the caller's cancellation:
	// set in the SQLite writer, where a write function that has started
	// runs to its end (a request that ends before its function starts is
	// skipped; see commitBatch). With a cancellable context go-sqlite3
	// runs each Exec on a fresh goroutine, which the one writer then
	// waits for.
	uncancellable bool
}

func (t txQuerier) ctx(ctx context.Context) context.Context {
	if t.uncancellable {
		return context.WithoutCancel(ctx)
	}
	return ctx
}

func (t txQuerier) Exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	return t.tx.ExecContext(t.ctx(ctx), t.rewrite(q), args...)
}

func (t txQuerier) Query(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	return t.tx.QueryContext(t.ctx(ctx), t.rewrite(q), args...)
}

func (t txQuerier) QueryRow(ctx context.Context, q string, args ...any) *sql.Row {
	return t.tx.QueryRowContext(t.ctx(ctx), t.rewrite(q), args...)
}

type writeTx struct {
	txQuerier
	onCommit []func()
	after    []func()
	// tracked: the SQLite writer's, whose rows closeRows closes once the
	// write function has returned (open holds them). On its *sql.Conn
	// (commitBatch) rows left open would keep the connection from going
	// back to the pool after the commit, and so stop the writer; in a
	// *sql.Tx database/sql closed them when the transaction ended.
	// (QueryRow's rows close in Scan, which every caller of QueryRow
	// calls at once.)
	tracked bool
	open    []*sql.Rows
}

// Query is txQuerier's, the rows remembered when tracked.
func (w *writeTx) Query(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	rows, err := w.txQuerier.Query(ctx, q, args...)
	if err == nil && w.tracked {
		w.open = append(w.open, rows)
	}
	return rows, err
}

// closeRows closes the rows of every Query the write function made
// (Close is a no-op on rows already closed).
func (w *writeTx) closeRows() {
	for _, rows := range w.open {
		_ = rows.Close()
	}
	clear(w.open)
	w.open = w.open[:0]
}

// execOnce runs q, already in the engine's dialect, without the rewriter's
// memo. It is for texts that run once in a process's life, the migrations:
// through Exec, every migration's text and its rewrite stayed in the memo
// for good (two copies of ~45 KB of SQL, in strings of 1–8 KB, each one
// keeping a span of the Go heap in use at idle).
func (w *writeTx) execOnce(ctx context.Context, q string) (sql.Result, error) {
	return w.tx.ExecContext(w.ctx(ctx), q)
}

func (w *writeTx) AfterCommit(fn func()) { w.after = append(w.after, fn) }

func (w *writeTx) OnCommit(fn func()) { w.onCommit = append(w.onCommit, fn) }

func (w *writeTx) runOnCommit() {
	for _, fn := range w.onCommit {
		fn()
	}
}

func (w *writeTx) runAfterCommit() {
	for _, fn := range w.after {
		fn()
	}
}

// newRewriter memoises a rewrite function: queries are a small fixed set of
// constants, so each is rewritten once. A text with more than
// maxCachedStatementArgs placeholders is built from a list and differs
// with its length: it is rewritten on every use instead of being kept for
// the process's life (a 500-element IN list is a few KB of text, held
// twice, for every length ever queried).
func newRewriter(fn func(string) string) func(string) string {
	var cache sync.Map
	return func(q string) string {
		if v, ok := cache.Load(q); ok {
			return v.(string)
		}
		out := fn(q)
		if strings.Count(q, "$") <= maxCachedStatementArgs { // an upper bound of the placeholders
			cache.Store(q, out)
		}
		return out
	}
}

// rewriteForSQLite turns $N placeholders into SQLite's ?N (same numbering,
// so a placeholder may repeat or appear out of order), leaving string
// literals, quoted identifiers, comments and a $ inside an identifier
// (legal on both engines: "a$1") alone.
func rewriteForSQLite(q string) string {
	var b strings.Builder
	b.Grow(len(q))
	for i := 0; i < len(q); i++ {
		c := q[i]
		var skip int // length of a literal or comment starting at i
		switch {
		case c == '\'' || c == '"':
			// A doubled quote inside ('it''s') reads as close-then-open,
			// which copies the same bytes.
			skip = len(q) - i
			if j := strings.IndexByte(q[i+1:], c); j >= 0 {
				skip = j + 2
			}
		case c == '-' && strings.HasPrefix(q[i:], "--"):
			skip = len(q) - i
			if j := strings.IndexByte(q[i:], '\n'); j >= 0 {
				skip = j + 1
			}
		case c == '/' && strings.HasPrefix(q[i:], "/*"):
			skip = len(q) - i
			if j := strings.Index(q[i+2:], "*/"); j >= 0 {
				skip = j + 4
			}
		case c == '$' && i+1 < len(q) && isDigit(q[i+1]) && (i == 0 || !isIdentByte(q[i-1])):
			c = '?'
		}
		if skip > 0 {
			b.WriteString(q[i : i+skip])
			i += skip - 1
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func isIdentByte(c byte) bool {
	return isDigit(c) || c == '_' || c == '$' || c >= 0x80 ||
		(c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}
