// Command myelin is the Myelin Matrix homeserver.
//
//	myelin [serve]            run the server (creates myelin.yaml, the signing key and database on first run)
//	myelin generate-config    print a documented config file
//	myelin generate-tls       write a TLS certificate and key for the federation listener
//	myelin version            print the version
//
// Every subcommand takes -config (default myelin.yaml).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/homeserver"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "myelin:", err)
		os.Exit(1)
	}
}

type command struct {
	summary string
	run     func(args []string, stdout, stderr io.Writer) error
}

func commands() map[string]command {
	return map[string]command{
		"serve":           {"run the homeserver (the default)", runServe},
		"generate-config": {"print a documented config file with the defaults", runGenerateConfig},
		"generate-tls":    {"write a federation TLS certificate: self-signed, or issued by a CA", runGenerateTLS},
		"version":         {"print the version", runVersion},
		"user":            {"manage accounts: create, passwd, deactivate, list", runUser},
		"token":           {"manage registration tokens: create, list, revoke", runToken},
		"reports":         {"read and clear content reports: list, show, delete", runReports},
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	name := "serve"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		name, args = args[0], args[1:]
	}
	if name == "help" {
		usage(stdout)
		return nil
	}
	cmd, ok := commands()[name]
	if !ok {
		usage(stderr)
		return fmt.Errorf("unknown command %q", name)
	}
	return cmd.run(args, stdout, stderr)
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: myelin <command> [-config myelin.yaml] [arguments]")
	for _, name := range []string{"serve", "generate-config", "generate-tls", "user", "token", "reports", "version"} {
		fmt.Fprintf(w, "  %-16s %s\n", name, commands()[name].summary)
	}
}

func runVersion(args []string, stdout, _ io.Writer) error {
	v := version
	if info, ok := debug.ReadBuildInfo(); ok && v == "dev" && info.Main.Version != "" && info.Main.Version != "(devel)" {
		v = info.Main.Version
	}
	fmt.Fprintln(stdout, "myelin", v)
	return nil
}

func runGenerateConfig(args []string, stdout, _ io.Writer) error {
	fs := flag.NewFlagSet("generate-config", flag.ContinueOnError)
	serverName := fs.String("server-name", "", "server_name to write into the config")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg := config.Defaults()
	if *serverName != "" {
		cfg.Global.ServerName = *serverName
	}
	_, err := stdout.Write(config.Sample(cfg))
	return err
}

// loadConfig reads the config at path. When create is set and the file does
// not exist, it first writes the documented defaults there. extraEnv
// entries (KEY=value) override the process environment.
func loadConfig(path string, create bool, stdout io.Writer, extraEnv ...string) (*config.Config, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) && create {
		if err := os.WriteFile(path, config.Sample(config.Defaults()), 0o600); err != nil {
			return nil, fmt.Errorf("writing default config: %w", err)
		}
		fmt.Fprintf(stdout, "Wrote a default config to %s (edit it to change server_name, registration, ...).\n", path)
	}
	return config.Load(path, append(os.Environ(), extraEnv...))
}

func newLogger(cfg config.Logging, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.Level))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// serveConfig parses serve's flags and loads the config they point at.
func serveConfig(args []string, stdout io.Writer) (cfg *config.Config, configPath string, err error) {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.StringVar(&configPath, "config", "myelin.yaml", "config file (created with defaults if missing)")
	serverNameEnv := fs.String("server-name-env", "", "read global.server_name from this environment variable (e.g. SERVER_NAME, as Complement sets it); it overrides the file and MYELIN_GLOBAL_SERVER_NAME")
	components := fs.String("components", "", "run only these components, comma-separated ("+strings.Join(config.ComponentNames, ",")+"; or all); it overrides global.components and MYELIN_GLOBAL_COMPONENTS. A subset needs PostgreSQL and Redis shared with the processes running the others")
	if err := fs.Parse(args); err != nil {
		return nil, "", err
	}
	var extraEnv []string
	if *components != "" {
		extraEnv = append(extraEnv, config.EnvName([]string{"global", "components"})+"="+*components)
	}
	if *serverNameEnv != "" {
		name := os.Getenv(*serverNameEnv)
		if name == "" {
			return nil, "", fmt.Errorf("-server-name-env %s: the environment variable %s is empty or unset; set it to the server name", *serverNameEnv, *serverNameEnv)
		}
		extraEnv = append(extraEnv, config.EnvName([]string{"global", "server_name"})+"="+name)
	}
	cfg, err = loadConfig(configPath, true, stdout, extraEnv...)
	return cfg, configPath, err
}

func runServe(args []string, stdout, stderr io.Writer) error {
	cfg, configPath, err := serveConfig(args, stdout)
	if err != nil {
		return err
	}
	logger := newLogger(cfg.Logging, stderr)
	slog.SetDefault(logger)
	limit, limitFromEnv := applyMemoryLimit(cfg.Global.MemoryLimitMB, os.Getenv)
	if limit != math.MaxInt64 {
		source := "global.memory_limit_mb"
		if limitFromEnv {
			source = "GOMEMLIMIT"
		}
		logger.Info("Go soft memory limit", "mib", limit>>20, "from", source)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if limit != math.MaxInt64 && !limitFromEnv {
		// The configured limit is a floor: raised when the steady live
		// heap needs more (memgovernor.go).
		go governMemoryLimit(ctx, limit, time.Second, 30)
	}

	hs, err := homeserver.New(ctx, cfg, logger)
	if err != nil {
		return err
	}
	defer hs.Close()
	if cfg.Global.IdleGC {
		startIdleGC(ctx, hs.Activity.Count)
	}

	ln, err := net.Listen("tcp", cfg.HTTP.Listen)
	if err != nil {
		return fmt.Errorf("listening on %s (http.listen): %w", cfg.HTTP.Listen, err)
	}
	var fedLn net.Listener
	if cfg.Federation.Listen != "" {
		fedLn, err = net.Listen("tcp", cfg.Federation.Listen)
		if err != nil {
			ln.Close()
			return fmt.Errorf("listening on %s (federation_api.listen): %w", cfg.Federation.Listen, err)
		}
	}
	fmt.Fprintf(stdout, "Myelin %s is serving %s\n", version, cfg.Global.ServerName)
	fmt.Fprintf(stdout, "  Client URL: http://%s  (point Element or another Matrix client here)\n", ln.Addr())
	if fedLn != nil {
		fmt.Fprintf(stdout, "  Federation: https://%s\n", fedLn.Addr())
	}
	fmt.Fprintf(stdout, "  Create the first user: myelin user create -config %s -admin <name>\n", configPath)
	fmt.Fprintf(stdout, "  Registration: %s. Stop with Ctrl-C.\n", cfg.ClientAPI.Registration)
	logger.Info("listening", "addr", ln.Addr().String(), "server_name", cfg.Global.ServerName)
	if fedLn != nil {
		logger.Info("listening for federation (TLS)", "addr", fedLn.Addr().String())
	}
	releaseStartupMemory(ctx, hs, logger)
	if err := serveAll(ctx, hs, ln, fedLn); err != nil {
		return err
	}
	logger.Info("shut down cleanly")
	return nil
}

// releaseStartupMemory hands back what start-up used and an idle server
// does not hold on to, once, before any request is served:
//   - the SQLite writer's page cache, which after a first start's
//     migrations holds the whole freshly written database (~1 MB of pages
//     nothing reads again; storage.DB.ReleaseStartupCache);
//   - the pages that frees, and anything else free, in glibc's malloc
//     arenas (malloc_trim): glibc returns free memory to the kernel by
//     itself only from the top of an arena;
//   - the Go heap's garbage from config loading, migrations, key loading
//     and the first queries, which the runtime would return to the OS only
//     minutes later: one forced collection that releases freed pages at
//     once takes milliseconds.
//
// docs/benchmarks.md, "idlerss2", has what each saves.
func releaseStartupMemory(ctx context.Context, hs *homeserver.Homeserver, logger *slog.Logger) {
	if err := hs.DB.ReleaseStartupCache(ctx); err != nil {
		// Only memory is at stake: serve anyway.
		logger.Warn("releasing start-up memory", "err", err)
	}
	mallocTrim()
	debug.FreeOSMemory()
}

// applyMemoryLimit makes global.memory_limit_mb (MiB; 0: none) the Go
// runtime's soft memory limit, unless the GOMEMLIMIT environment variable is
// set: the runtime has then read it at start, and an explicit environment
// wins over the config file, as it does for every Go program. It returns the
// limit in effect, in bytes (math.MaxInt64: none), and whether it came from
// GOMEMLIMIT.
func applyMemoryLimit(limitMB int64, getenv func(string) string) (limit int64, fromEnv bool) {
	if getenv("GOMEMLIMIT") != "" {
		return debug.SetMemoryLimit(-1), true
	}
	limit = math.MaxInt64
	if limitMB > 0 && limitMB <= math.MaxInt64>>20 {
		limit = limitMB << 20
	}
	debug.SetMemoryLimit(limit)
	return limit, false
}

// serveAll runs the HTTP listener and, if fedLn is not nil, the federation
// listener, until ctx ends or either stops; then it shuts both down and
// returns the first error.
func serveAll(ctx context.Context, hs *homeserver.Homeserver, ln, fedLn net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 2)
	running := 1
	go func() { errc <- hs.Serve(ctx, ln) }()
	if fedLn != nil {
		running++
		go func() { errc <- hs.ServeFederation(ctx, fedLn) }()
	}
	var first error
	for ; running > 0; running-- {
		if err := <-errc; err != nil && first == nil {
			first = err
		}
		cancel()
	}
	return first
}
