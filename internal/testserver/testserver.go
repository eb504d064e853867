// Package testserver starts a real Myelin homeserver for end-to-end tests:
// on 127.0.0.1 with a random port, a temp dir for its key and data, and the
// database engine chosen by the test (SQLite always; PostgreSQL when
// MYELIN_TEST_POSTGRES is set).
package testserver

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/homeserver"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// Server is a running test homeserver.
type Server struct {
	URL    string // e.g. http://127.0.0.1:41234
	Config *config.Config
	HS     *homeserver.Homeserver
	stop   func()
}

// Start runs a homeserver until the test ends. edit, if non-nil, adjusts
// the config first (defaults: server_name "localhost", open registration,
// rate limits off, SQLite in t.TempDir()).
func Start(t testing.TB, engine storage.Engine, edit func(*config.Config)) *Server {
	t.Helper()
	dir := t.TempDir()
	cfg := config.Defaults()
	cfg.Global.ServerName = "localhost"
	cfg.Global.DataDir = dir
	cfg.Global.SigningKeyPath = filepath.Join(dir, "signing.key")
	cfg.ClientAPI.Registration = "open"
	cfg.ClientAPI.RateLimits.Enabled = false
	cfg.HTTP.ShutdownTimeout = config.Duration(2 * time.Second)
	switch engine {
	case storage.Postgres:
		opts := storagetest.PostgresOptions(t)
		cfg.Database = config.Database{Engine: "postgres", PostgresURL: opts.PostgresURL, MaxOpenConns: 8}
	default:
		cfg.Database = config.Database{Engine: "sqlite", SQLitePath: filepath.Join(dir, "myelin.db")}
	}
	if edit != nil {
		edit(&cfg)
	}
	srv := &Server{Config: &cfg}
	srv.run(t)
	t.Cleanup(func() { srv.stop() })
	return srv
}

// Restart stops the server as a shutdown would and starts a new one on
// the same config, database and signing key, at a new URL. Nothing held
// in memory survives.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.stop()
	s.run(t)
}

// Stop stops the server as a shutdown would, before the test ends (as
// when an admin stops one process of a deployment). Later calls, and the
// test's own clean-up, do nothing more.
func (s *Server) Stop() { s.stop() }

// run starts a homeserver on s.Config, listening on a new port.
func (s *Server) run(t testing.TB) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.Config.HTTP.Listen = ln.Addr().String()
	if err := s.Config.Validate(); err != nil {
		t.Fatalf("test config: %v", err)
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if os.Getenv("MYELIN_TEST_LOG") != "" {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	ctx, cancel := context.WithCancel(context.Background())
	hs, err := homeserver.New(ctx, s.Config, logger)
	if err != nil {
		cancel()
		t.Fatalf("starting homeserver: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- hs.Serve(ctx, ln) }()
	var once sync.Once
	s.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("serve: %v", err)
			}
			hs.Close()
		})
	}
	s.URL, s.HS = "http://"+ln.Addr().String(), hs
}

// ForEachEngine runs fn as a subtest against a server on each engine.
func ForEachEngine(t *testing.T, edit func(*config.Config), fn func(t *testing.T, srv *Server)) {
	t.Helper()
	for _, engine := range []storage.Engine{storage.SQLite, storage.Postgres} {
		t.Run(string(engine), func(t *testing.T) {
			fn(t, Start(t, engine, edit))
		})
	}
}
