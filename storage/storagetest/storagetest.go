// Package storagetest opens real databases for tests: a fresh SQLite file
// in the test's temp dir always, and a fresh PostgreSQL schema when
// MYELIN_TEST_POSTGRES holds a connection string (CI sets it).
package storagetest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/pgdriver"
)

// PostgresEnv names the environment variable holding the PostgreSQL
// connection string for tests.
const PostgresEnv = "MYELIN_TEST_POSTGRES"

// Engines lists the engines tests can run on here.
func Engines() []storage.Engine {
	if os.Getenv(PostgresEnv) != "" {
		return []storage.Engine{storage.SQLite, storage.Postgres}
	}
	return []storage.Engine{storage.SQLite}
}

// ForEachEngine runs fn as a subtest on a fresh database of every engine
// available. Without MYELIN_TEST_POSTGRES the PostgreSQL subtest is
// skipped with a message saying so (it is not counted as passing).
func ForEachEngine(t *testing.T, fn func(t *testing.T, db *storage.DB)) {
	t.Helper()
	t.Run("sqlite", func(t *testing.T) { fn(t, OpenSQLite(t)) })
	t.Run("postgres", func(t *testing.T) { fn(t, OpenPostgres(t)) })
}

// Open returns a fresh database of the given engine.
func Open(t testing.TB, engine storage.Engine) *storage.DB {
	t.Helper()
	if engine == storage.Postgres {
		return OpenPostgres(t)
	}
	return OpenSQLite(t)
}

// OpenSQLite returns a fresh SQLite database, closed when the test ends.
func OpenSQLite(t testing.TB) *storage.DB {
	t.Helper()
	db, err := storage.Open(context.Background(), SQLiteOptions(t))
	if err != nil {
		t.Fatalf("opening sqlite: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// SQLiteOptions returns options for a new SQLite file in t's temp dir.
func SQLiteOptions(t testing.TB) storage.Options {
	return storage.Options{Engine: storage.SQLite, SQLitePath: filepath.Join(t.TempDir(), "myelin.db")}
}

// PostgresOptions creates a fresh schema in the test database and returns
// options whose connections use it; the schema is dropped when the test
// ends. It skips the test when MYELIN_TEST_POSTGRES is not set.
func PostgresOptions(t testing.TB) storage.Options {
	t.Helper()
	base := os.Getenv(PostgresEnv)
	if base == "" {
		t.Skipf("PostgreSQL test skipped: set %s to a connection string (e.g. postgres://user:pass@localhost/myelin_test?sslmode=disable) to run it", PostgresEnv)
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := "t_" + hex.EncodeToString(b[:])
	admin, err := sql.Open(pgdriver.DriverName, base)
	if err != nil {
		t.Fatalf("opening postgres: %v", err)
	}
	defer admin.Close()
	if _, err := admin.Exec("CREATE SCHEMA " + schema); err != nil {
		t.Fatalf("creating schema: %v", err)
	}
	t.Cleanup(func() {
		admin, err := sql.Open(pgdriver.DriverName, base)
		if err != nil {
			return
		}
		defer admin.Close()
		_, _ = admin.Exec("DROP SCHEMA " + schema + " CASCADE")
	})
	return storage.Options{Engine: storage.Postgres, PostgresURL: withSearchPath(t, base, schema), MaxOpenConns: 8}
}

// OpenPostgres returns a database on a fresh PostgreSQL schema.
func OpenPostgres(t testing.TB) *storage.DB {
	t.Helper()
	db, err := storage.Open(context.Background(), PostgresOptions(t))
	if err != nil {
		t.Fatalf("opening postgres: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func withSearchPath(t testing.TB, conn, schema string) string {
	if strings.HasPrefix(conn, "postgres://") || strings.HasPrefix(conn, "postgresql://") {
		u, err := url.Parse(conn)
		if err != nil {
			t.Fatalf("parsing %s: %v", PostgresEnv, err)
		}
		q := u.Query()
		q.Set("search_path", schema)
		u.RawQuery = q.Encode()
		return u.String()
	}
	return conn + " search_path=" + schema
}
