package storage_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// migrations builds a migrations directory from name -> SQL pairs.
func migrations(files ...string) fstest.MapFS {
	fsys := fstest.MapFS{}
	for i := 0; i+1 < len(files); i += 2 {
		fsys[files[i]] = &fstest.MapFile{Data: []byte(files[i+1])}
	}
	return fsys
}

// threeSteps: each migration depends on the one before and logs its number,
// so running them out of order fails and the log shows the order they ran.
var threeSteps = []string{
	"001_log.sql", `CREATE TABLE steps (seq BIGSERIAL PRIMARY KEY, step BIGINT NOT NULL);
		INSERT INTO steps (step) VALUES (1);`,
	"002_rooms.sql", `-- the room's table; $1 in a comment is harmless
		CREATE TABLE rooms (room_id TEXT PRIMARY KEY, version TEXT NOT NULL, blob BYTEA);
		INSERT INTO steps (step) VALUES (2);`,
	"003_room_depth.sql", `ALTER TABLE rooms ADD COLUMN depth BIGINT NOT NULL DEFAULT 0;
		INSERT INTO steps (step) VALUES (3);`,
}

func schemaVersion(t *testing.T, db *storage.DB, component string) int {
	t.Helper()
	v, err := db.SchemaVersion(context.Background(), component)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestMigrateInOrderAndIdempotent(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		if v := schemaVersion(t, db, "roomserver"); v != 0 {
			t.Fatalf("fresh database at version %d", v)
		}
		// A first binary knows two migrations, a later one three.
		if err := db.Migrate(ctx, "roomserver", migrations(threeSteps[:4]...)); err != nil {
			t.Fatal(err)
		}
		if v := schemaVersion(t, db, "roomserver"); v != 2 {
			t.Errorf("version = %d, want 2", v)
		}
		for range 2 { // the second run must change nothing
			if err := db.Migrate(ctx, "roomserver", migrations(threeSteps...)); err != nil {
				t.Fatal(err)
			}
		}
		if v := schemaVersion(t, db, "roomserver"); v != 3 {
			t.Errorf("version = %d, want 3", v)
		}
		if got := int64s(t, db.Reader(), `SELECT step FROM steps ORDER BY seq`); !slices.Equal(got, []int64{1, 2, 3}) {
			t.Errorf("steps ran %v, want [1 2 3] once each", got)
		}
		exec(t, db, `INSERT INTO rooms (room_id, version, blob, depth) VALUES ($1, $2, $3, $4)`,
			"!r:example.org", "10", []byte{0, 1}, 5)
	})
}

func TestMigrateComponentsAreIndependent(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		if err := db.Migrate(ctx, "roomserver", migrations(threeSteps...)); err != nil {
			t.Fatal(err)
		}
		if err := db.Migrate(ctx, "userapi", migrations("001_accounts.sql", `CREATE TABLE accounts (localpart TEXT PRIMARY KEY)`)); err != nil {
			t.Fatal(err)
		}
		if a, b := schemaVersion(t, db, "roomserver"), schemaVersion(t, db, "userapi"); a != 3 || b != 1 {
			t.Errorf("versions roomserver=%d userapi=%d, want 3 and 1", a, b)
		}
	})
}

func TestMigrateEngineFileOverridesShared(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		fsys := migrations(
			"001_engine.sql", `CREATE TABLE engine (name TEXT NOT NULL)`,
			"002_fill.sql", `INSERT INTO engine (name) VALUES ('shared')`,
			"002_fill.sqlite.sql", `INSERT INTO engine (name) VALUES ('sqlite')`,
			"002_fill.postgres.sql", `INSERT INTO engine (name) VALUES ('postgres')`,
			// Only one engine has its own 003; the other uses the shared one.
			"003_more.sql", `INSERT INTO engine (name) VALUES ('shared 3')`,
			"003_more.postgres.sql", `INSERT INTO engine (name) VALUES ('postgres 3')`,
			// Engine-only migrations: no shared file at all.
			"004_only.sqlite.sql", `INSERT INTO engine (name) VALUES ('sqlite 4')`,
			"004_only.postgres.sql", `INSERT INTO engine (name) VALUES ('postgres 4')`,
		)
		if err := db.Migrate(ctx, "c", fsys); err != nil {
			t.Fatal(err)
		}
		rows, err := db.Reader().Query(ctx, `SELECT name FROM engine ORDER BY name`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var got []string
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				t.Fatal(err)
			}
			got = append(got, s)
		}
		want := map[storage.Engine][]string{
			storage.SQLite:   {"shared 3", "sqlite", "sqlite 4"},
			storage.Postgres: {"postgres", "postgres 3", "postgres 4"},
		}[db.Engine()]
		if !slices.Equal(got, want) {
			t.Errorf("rows %v, want %v", got, want)
		}
	})
}

func TestMigrateRejectsBadSets(t *testing.T) {
	ok := `CREATE TABLE t (id BIGINT)`
	tests := []struct {
		name  string
		fsys  fstest.MapFS
		inErr string
	}{
		{"gap", migrations("001_a.sql", ok, "003_c.sql", ok), "without gaps"},
		{"starts at 2", migrations("002_b.sql", ok), "without gaps"},
		{"starts at 0", migrations("000_zero.sql", ok, "001_a.sql", ok), "without gaps"},
		{"duplicate number", migrations("001_a.sql", ok, "001_b.sql", ok), "two migrations numbered 001"},
		{"duplicate engine file", migrations("001_a.sqlite.sql", ok, "001_b.sqlite.sql", ok, "001_a.postgres.sql", ok, "001_b.postgres.sql", ok), "two migrations numbered 001"},
		{"no number", migrations("init.sql", ok), "name must be"},
		{"upper case", migrations("001_Init.sql", ok), "name must be"},
		{"wrong extension", migrations("001_init.txt", ok), "name must be"},
		{"unknown engine", migrations("001_init.mysql.sql", ok), "name must be"},
		{"stray file", migrations("001_init.sql", ok, "README.md", "notes"), "name must be"},
	}
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				err := db.Migrate(context.Background(), "bad", tt.fsys)
				if err == nil || !strings.Contains(err.Error(), tt.inErr) {
					t.Fatalf("Migrate = %v, want an error containing %q", err, tt.inErr)
				}
				if v := schemaVersion(t, db, "bad"); v != 0 {
					t.Errorf("version %d after a rejected set, want 0", v)
				}
			})
		}
	})
}

func TestMigrateFailureRollsBackThatMigration(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		fsys := migrations(
			"001_a.sql", `CREATE TABLE a (id BIGINT)`,
			"002_b.sql", `CREATE TABLE b (id BIGINT); INSERT INTO nowhere VALUES (1);`,
		)
		err := db.Migrate(ctx, "c", fsys)
		if err == nil || !strings.Contains(err.Error(), "002_b") {
			t.Fatalf("Migrate = %v, want an error naming 002_b", err)
		}
		if v := schemaVersion(t, db, "c"); v != 1 {
			t.Errorf("version = %d, want 1", v)
		}
		// 002's first statement did not survive its failure.
		var n int
		if err := db.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM b`).Scan(&n); err == nil {
			t.Error("table b exists after its migration failed")
		}
		exec(t, db, `INSERT INTO a (id) VALUES (1)`)
	})
}

// TestMigrateRefusesNewerSchema: an older binary must not run on, or touch,
// a database a newer Myelin has migrated (SECURITY-CASES.md, case 40).
func TestMigrateRefusesNewerSchema(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		if err := db.Migrate(ctx, "roomserver", migrations(threeSteps...)); err != nil {
			t.Fatal(err)
		}
		older := []fstest.MapFS{
			migrations(threeSteps[:4]...),
			migrations(threeSteps[:2]...),
			migrations(), // knows no migrations at all
		}
		for _, fsys := range older {
			err := db.Migrate(ctx, "roomserver", fsys)
			if !errors.Is(err, storage.ErrSchemaTooNew) {
				t.Errorf("Migrate with %d known migrations = %v, want ErrSchemaTooNew", len(fsys), err)
			}
		}
		if v := schemaVersion(t, db, "roomserver"); v != 3 {
			t.Errorf("version = %d after refusals, want 3", v)
		}
		if got := int64s(t, db.Reader(), `SELECT step FROM steps ORDER BY seq`); !slices.Equal(got, []int64{1, 2, 3}) {
			t.Errorf("steps %v, want [1 2 3]", got)
		}
		// A version recorded by a much newer binary is refused the same way.
		exec(t, db, `UPDATE myelin_schema SET version = 99 WHERE component = 'roomserver'`)
		if err := db.Migrate(ctx, "roomserver", migrations(threeSteps...)); !errors.Is(err, storage.ErrSchemaTooNew) {
			t.Errorf("Migrate on version 99 = %v, want ErrSchemaTooNew", err)
		}
	})
}

// A migration's text runs once in the process's life, so it must not pass
// through the query rewrite's memo, which keeps every text it sees (and its
// rewrite) for good: ~45 KB of SQL twice over, at idle, in a real server.
// The migrations must still be rewritten for the engine (BIGSERIAL, BYTEA
// and a $1 in a comment in threeSteps; an engine's own file too).
func TestMigrationTextsBypassRewriteMemo(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		var seen []string
		db.WrapRewrite(func(rewrite func(string) string) func(string) string {
			return func(q string) string {
				seen = append(seen, q) // the writer runs one write at a time
				return rewrite(q)
			}
		})
		own := map[storage.Engine]string{storage.SQLite: "sqlite", storage.Postgres: "postgres"}[db.Engine()]
		files := append(slices.Clone(threeSteps),
			"004_own."+own+".sql", `CREATE TABLE own_engine (id BIGINT PRIMARY KEY);
				INSERT INTO steps (step) VALUES (4);`)
		if err := db.Migrate(ctx, "roomserver", migrations(files...)); err != nil {
			t.Fatal(err)
		}
		if v := schemaVersion(t, db, "roomserver"); v != 4 {
			t.Fatalf("version = %d, want 4", v)
		}
		for _, q := range seen {
			for _, marker := range []string{"CREATE TABLE steps", "CREATE TABLE rooms", "ADD COLUMN depth", "own_engine"} {
				if strings.Contains(q, marker) {
					t.Errorf("migration text went through the memoised rewrite: %.60q", q)
				}
			}
		}
		if len(seen) == 0 {
			t.Error("no query went through the rewrite: the hook is not in place")
		}
		if got := int64s(t, db.Reader(), `SELECT step FROM steps ORDER BY seq`); !slices.Equal(got, []int64{1, 2, 3, 4}) {
			t.Errorf("steps ran %v, want [1 2 3 4]", got)
		}
		exec(t, db, `INSERT INTO rooms (room_id, version, blob, depth) VALUES ($1, $2, $3, $4)`,
			"!r:example.org", "10", []byte{0, 1}, 5)
		exec(t, db, `INSERT INTO own_engine (id) VALUES ($1)`, 7)
	})
}
