package storage

import (
	"context"
	"fmt"
	"io/fs"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// migrationName matches NNN_description.sql, NNN_description.sqlite.sql and
// NNN_description.postgres.sql. A migration that differs per engine has
// both engine files side by side; otherwise one file serves both.
var migrationName = regexp.MustCompile(`^(\d+)_([a-z0-9_]+?)(\.(sqlite|postgres))?\.sql$`)

// ErrSchemaTooNew is wrapped by Migrate's error when the database was
// written by a newer Myelin than this binary.
var ErrSchemaTooNew = fmt.Errorf("storage: database schema is newer than this binary")

type migration struct {
	version int
	name    string
	sql     string
}

// Migrate applies component's migrations from fsys (its embedded
// migrations directory, as the root) that the database has not seen yet,
// each in its own transaction, and records the version reached. It refuses
// to run when the database is at a version this binary does not know.
func (db *DB) Migrate(ctx context.Context, component string, fsys fs.FS) error {
	migrations, err := db.loadMigrations(fsys)
	if err != nil {
		return fmt.Errorf("storage: %s migrations: %w", component, err)
	}
	known := 0
	if len(migrations) > 0 {
		known = migrations[len(migrations)-1].version
	}
	if err := db.Write(ctx, func(tx Tx) error {
		_, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS myelin_schema (
			component TEXT PRIMARY KEY,
			version BIGINT NOT NULL,
			updated_ts BIGINT NOT NULL
		)`)
		return err
	}); err != nil {
		return fmt.Errorf("storage: creating schema table: %w", err)
	}
	for {
		applied := false
		err := db.Write(ctx, func(tx Tx) error {
			if db.engine == Postgres {
				// Several processes may start at once in split mode.
				if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(4242001)`); err != nil {
					return err
				}
			}
			current := 0
			err := tx.QueryRow(ctx, `SELECT version FROM myelin_schema WHERE component = $1`, component).Scan(&current)
			if err != nil && !IsNoRows(err) {
				return err
			}
			if current > known {
				return fmt.Errorf("%w: component %s is at schema version %d, this binary knows up to %d; run a newer myelin",
					ErrSchemaTooNew, component, current, known)
			}
			for _, m := range migrations {
				if m.version <= current {
					continue
				}
				if _, err := tx.(*writeTx).execOnce(ctx, m.sql); err != nil {
					return fmt.Errorf("applying %s migration %03d_%s: %w", component, m.version, m.name, err)
				}
				if _, err := tx.Exec(ctx, `INSERT INTO myelin_schema (component, version, updated_ts) VALUES ($1, $2, $3)
					ON CONFLICT (component) DO UPDATE SET version = excluded.version, updated_ts = excluded.updated_ts`,
					component, m.version, time.Now().UnixMilli()); err != nil {
					return err
				}
				applied = true
				return nil // one migration per transaction
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("storage: %w", err)
		}
		if !applied {
			return nil
		}
	}
}

// SchemaVersion returns the recorded schema version of component (0 if none).
func (db *DB) SchemaVersion(ctx context.Context, component string) (int, error) {
	// Before the first Migrate there is no version table: version 0.
	tableQuery := `SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'myelin_schema'`
	if db.engine == Postgres {
		tableQuery = `SELECT COUNT(*) FROM (SELECT to_regclass('myelin_schema') AS t) AS r WHERE t IS NOT NULL`
	}
	tables := 0
	if err := db.Reader().QueryRow(ctx, tableQuery).Scan(&tables); err != nil {
		return 0, err
	}
	if tables == 0 {
		return 0, nil
	}
	v := 0
	err := db.Reader().QueryRow(ctx, `SELECT version FROM myelin_schema WHERE component = $1`, component).Scan(&v)
	if IsNoRows(err) {
		return 0, nil
	}
	return v, err
}

func (db *DB) loadMigrations(fsys fs.FS) ([]migration, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, err
	}
	shared := map[int]migration{}
	own := map[int]migration{}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		m := migrationName.FindStringSubmatch(e.Name())
		if m == nil {
			return nil, fmt.Errorf("%s: name must be NNN_description[.sqlite|.postgres].sql", e.Name())
		}
		engine := m[4]
		if engine != "" && Engine(engine) != db.engine {
			continue
		}
		version, _ := strconv.Atoi(m[1])
		body, err := fs.ReadFile(fsys, e.Name())
		if err != nil {
			return nil, err
		}
		target := shared
		text := string(body)
		if engine != "" {
			target = own
		}
		// Rewritten here, once, for the engine: Migrate runs the text as
		// it is (execOnce), outside the rewriter's memo.
		if db.engine == SQLite {
			if engine == "" {
				text = ddlForSQLite(text)
			} else {
				text = rewriteForSQLite(text)
			}
		}
		if _, dup := target[version]; dup {
			return nil, fmt.Errorf("two migrations numbered %03d", version)
		}
		target[version] = migration{version: version, name: m[2], sql: text}
	}
	// An engine's own file replaces the shared one of the same number.
	byVersion := shared
	for v, m := range own {
		byVersion[v] = m
	}
	out := make([]migration, 0, len(byVersion))
	for _, m := range byVersion {
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].version < out[j].version })
	for i, m := range out {
		if m.version != i+1 {
			return nil, fmt.Errorf("migrations must be numbered 001, 002, ... without gaps; found %03d at position %d", m.version, i+1)
		}
	}
	return out, nil
}

// ddlForSQLite rewrites the few PostgreSQL type names shared migrations use
// into their SQLite equivalents.
func ddlForSQLite(q string) string {
	r := strings.NewReplacer(
		"BIGSERIAL PRIMARY KEY", "INTEGER PRIMARY KEY AUTOINCREMENT",
		"BYTEA", "BLOB",
	)
	return rewriteForSQLite(r.Replace(q))
}
