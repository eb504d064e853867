package config

import (
	"encoding/base64"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Global holds settings every component shares.
type Global struct {
	ServerName string `yaml:"server_name" doc:"The domain in your users' IDs (@alice:server_name). Cannot change once users exist."`
	// PublicBaseURL is where clients reach this server.
	PublicBaseURL   string   `yaml:"public_baseurl" doc:"The URL clients use to reach this server, advertised in /.well-known/matrix/client. Empty means http://<http.listen>."`
	SigningKeyPath  string   `yaml:"signing_key_path" doc:"The server's Ed25519 signing key. Created on first start if missing. Keep it secret and back it up."`
	DataDir         string   `yaml:"data_dir" doc:"Directory for the signing key, the SQLite database and media, unless their own paths say otherwise."`
	TrustedProxies  []string `yaml:"trusted_proxies" doc:"Reverse proxies (IPs or CIDRs) whose X-Forwarded-For header is believed. Empty: the TCP peer is the client."`
	WellKnownServer string   `yaml:"well_known_server" doc:"Value of m.server in /.well-known/matrix/server (host:port). Empty: the endpoint answers 404 and peers use port 8448."`
	AdminMatrixID   string   `yaml:"admin_matrix_id" doc:"The administrator's Matrix ID, published in /.well-known/matrix/support. With admin_email and support_page all empty, that endpoint answers 404."`
	AdminEmail      string   `yaml:"admin_email" doc:"The administrator's email address, published in /.well-known/matrix/support."`
	SupportPage     string   `yaml:"support_page" doc:"A URL of a support page for this server's users, published in /.well-known/matrix/support."`
	// RedisURL switches stream notifications from in-process to Redis.
	RedisURL string `yaml:"redis_url" doc:"Redis for split deployments (several Myelin processes on one database): redis://[:password@]host:port/db (rediss:// for TLS). Processes tell each other through it that a stream advanced. Empty: one process, notifications stay in memory."`
	// Components are the components this process runs (config/components.go).
	Components  []string `yaml:"components" doc:"The components this process runs: any of clientapi, syncapi, federationapi, keyserver, mediaapi, pushserver, appservice (the roomserver is a library every process has). Empty or all: every one, in this process. A subset is a split deployment: the others run in other processes on the same PostgreSQL database and Redis (both required), and a reverse proxy routes each path to the process that serves it (docs/split.md). The flag serve -components overrides it."`
	RedisPrefix string   `yaml:"redis_prefix" doc:"Prefix of Myelin's Redis keys and channels, so several deployments can share one Redis. Processes of one deployment must use the same prefix."`
	// MemoryLimitMB becomes the Go runtime's soft memory limit
	// (runtime/debug.SetMemoryLimit) at start; cmd/myelin raises it while
	// the steady live heap needs more (memgovernor.go).
	MemoryLimitMB int64 `yaml:"memory_limit_mb" doc:"Soft limit, in MiB, on the memory the Go runtime manages (heap, goroutine stacks, runtime data; not SQLite's own allocations nor the mapped binary). Near it the garbage collector runs sooner and freed pages go back to the OS at once, instead of the heap growing to twice its live size during a burst (a large initial sync, a message fanned out to hundreds of long polls). It is a floor, not a cap: when the heap the server keeps live for 30 s needs more (twice the live heap, plus stacks and runtime data), the limit follows that need, so for a steady heap the collector works about as it would without a limit; bursts shorter than that stay under the limit at the cost of more frequent collections (the collector takes at most about half the CPU, then the heap grows past it). 0: no limit. Default 64 (measured in docs/benchmarks.md, \"Default soft memory limit\"). The GOMEMLIMIT environment variable, when set, takes precedence and is a fixed limit."`
	// IdleGC starts a garbage collection in a quiet spell (cmd/myelin,
	// idlegc.go).
	IdleGC bool `yaml:"idle_gc" doc:"Collect garbage when the server has been quiet (no HTTP request starting or ending, little allocation) for 100 ms and the heap has grown at least a quarter of the way to the collector's next goal since the last collection, so that a burst of work (a message fanned out to hundreds of long polls) starts with a fresh heap budget instead of meeting a collection half-way. It does only what the collector would do a little later; an idle server that allocates nothing never collects. Off with GOGC=off. Default true (measured in docs/benchmarks.md, \"idlegc\")."`
}

func (Global) Defaults() Global {
	return Global{
		ServerName:     "localhost",
		SigningKeyPath: "myelin-data/signing.key",
		DataDir:        "myelin-data",
		TrustedProxies: []string{},
		Components:     []string{},
		RedisPrefix:    "myelin:",
		MemoryLimitMB:  64,
		IdleGC:         true,
	}
}

// validServerName follows the spec's server name grammar: a hostname
// (1–255 of [0-9A-Za-z.-], which covers IPv4 literals) or a bracketed IPv6
// literal (2–45 of [0-9A-Fa-f:.]), with an optional port of 1–5 digits.
// Spec: appendices, "Server Name". It accepts exactly what the regular
// expression ^(\[[0-9A-Fa-f:.]{2,45}\]|[0-9A-Za-z.-]{1,255})(:[0-9]{1,5})?$
// does (TestValidServerNameMatchesGrammar), written out by hand because
// that expression compiles its bounded repetitions into a ~300-instruction
// program: 320 kB of heap held for the process's lifetime and 4 ms at
// every start, the largest package initialisation of the binary.
func validServerName(s string) bool {
	var rest string
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 || !allBytes(s[1:end], 2, 45, isIPv6LiteralByte) {
			return false
		}
		rest = s[end+1:]
	} else {
		host := s
		if i := strings.IndexByte(s, ':'); i >= 0 {
			host, rest = s[:i], s[i:]
		}
		if !allBytes(host, 1, 255, isHostnameByte) {
			return false
		}
	}
	if rest == "" {
		return true
	}
	return rest[0] == ':' && allBytes(rest[1:], 1, 5, isDigit)
}

// allBytes reports whether s has between lo and hi bytes, each accepted by ok.
func allBytes(s string, lo, hi int, ok func(byte) bool) bool {
	if len(s) < lo || len(s) > hi {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !ok(s[i]) {
			return false
		}
	}
	return true
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func isHostnameByte(c byte) bool {
	return isDigit(c) || 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || c == '.' || c == '-'
}

func isIPv6LiteralByte(c byte) bool {
	return isDigit(c) || 'A' <= c && c <= 'F' || 'a' <= c && c <= 'f' || c == ':' || c == '.'
}

func (g Global) Validate() error {
	var errs []error
	if g.ServerName == "" || !validServerName(g.ServerName) {
		errs = append(errs, fieldError("global.server_name", fmt.Sprintf("%q is not a valid server name", g.ServerName),
			"use your domain, e.g. example.org or matrix.example.org:8448"))
	}
	if g.SigningKeyPath == "" {
		errs = append(errs, fieldError("global.signing_key_path", "is empty", "set a file path, e.g. myelin-data/signing.key"))
	}
	for _, p := range g.TrustedProxies {
		if _, err := netip.ParsePrefix(p); err != nil {
			if _, err := netip.ParseAddr(p); err != nil {
				errs = append(errs, fieldError("global.trusted_proxies", fmt.Sprintf("%q is not an IP or CIDR", p), "write e.g. 127.0.0.1 or 10.0.0.0/8"))
			}
		}
	}
	if g.AdminMatrixID != "" && (!strings.HasPrefix(g.AdminMatrixID, "@") || !strings.Contains(g.AdminMatrixID, ":")) {
		errs = append(errs, fieldError("global.admin_matrix_id", fmt.Sprintf("%q is not a user ID", g.AdminMatrixID), "write e.g. @admin:example.org"))
	}
	if g.PublicBaseURL != "" && !strings.HasPrefix(g.PublicBaseURL, "http://") && !strings.HasPrefix(g.PublicBaseURL, "https://") {
		errs = append(errs, fieldError("global.public_baseurl", "must start with http:// or https://", "e.g. https://matrix.example.org"))
	}
	if g.MemoryLimitMB < 0 {
		errs = append(errs, fieldError("global.memory_limit_mb", "is negative", "use 0 for no limit, or a size in MiB such as 64"))
	}
	if g.RedisURL != "" {
		if !strings.HasPrefix(g.RedisURL, "redis://") && !strings.HasPrefix(g.RedisURL, "rediss://") {
			errs = append(errs, fieldError("global.redis_url", "must start with redis:// or rediss://", "e.g. redis://127.0.0.1:6379/0, or leave it empty for one process"))
		} else if _, err := redis.ParseURL(g.RedisURL); err != nil {
			// The parser's message may quote the URL; do not echo a password.
			errs = append(errs, fieldError("global.redis_url", "is not a valid Redis URL ("+redactRedisErr(err, g.RedisURL)+")", "write redis://[:password@]host:port/db, e.g. redis://127.0.0.1:6379/0"))
		}
		if g.RedisPrefix == "" {
			errs = append(errs, fieldError("global.redis_prefix", "is empty", `set a prefix such as "myelin:"`))
		}
	}
	return joinErrs(errs)
}

// HTTP is the client-facing listener.
type HTTP struct {
	Listen          string   `yaml:"listen" doc:"Address for the client-server API (host:port)."`
	MaxBodyBytes    int64    `yaml:"max_body_bytes" doc:"Largest request body accepted, except media uploads (see media limits). Larger bodies get 413 M_TOO_LARGE."`
	ShutdownTimeout Duration `yaml:"shutdown_timeout" doc:"How long a graceful shutdown waits for in-flight requests (long-polling syncs are ended first)."`
}

func (HTTP) Defaults() HTTP {
	return HTTP{Listen: "127.0.0.1:8008", MaxBodyBytes: 1 << 20, ShutdownTimeout: Duration(10 * time.Second)}
}

func (h HTTP) Validate() error {
	var errs []error
	if _, _, err := net.SplitHostPort(h.Listen); err != nil {
		errs = append(errs, fieldError("http.listen", fmt.Sprintf("%q is not host:port", h.Listen), "e.g. 127.0.0.1:8008 or :8008"))
	}
	if h.MaxBodyBytes < 65536 {
		errs = append(errs, fieldError("http.max_body_bytes", "is below 65536", "events alone may be 65536 bytes; use at least that"))
	}
	if h.ShutdownTimeout < 0 {
		errs = append(errs, fieldError("http.shutdown_timeout", "is negative", "use e.g. 10s"))
	}
	return joinErrs(errs)
}

// Database says where data lives.
type Database struct {
	Engine       string `yaml:"engine" doc:"sqlite (embedded, one process or one machine) or postgres."`
	SQLitePath   string `yaml:"sqlite_path" doc:"SQLite database file (engine: sqlite)."`
	PostgresURL  string `yaml:"postgres_url" doc:"PostgreSQL connection string (engine: postgres), e.g. postgres://myelin:secret@localhost/myelin?sslmode=disable."`
	MaxOpenConns int    `yaml:"max_open_conns" doc:"Connection pool size (readers on SQLite). 0 picks a default."`
}

func (Database) Defaults() Database {
	return Database{Engine: "sqlite", SQLitePath: "myelin-data/myelin.db"}
}

func (d Database) Validate() error {
	switch d.Engine {
	case "sqlite":
		if d.SQLitePath == "" {
			return fieldError("database.sqlite_path", "is empty", "set a file path, e.g. myelin-data/myelin.db")
		}
	case "postgres":
		if d.PostgresURL == "" {
			return fieldError("database.postgres_url", "is empty while engine is postgres", "set a connection string, e.g. postgres://myelin@localhost/myelin")
		}
	default:
		return fieldError("database.engine", fmt.Sprintf("%q is not an engine", d.Engine), "use sqlite or postgres")
	}
	if d.MaxOpenConns < 0 {
		return fieldError("database.max_open_conns", "is negative", "use 0 for the default")
	}
	return nil
}

// Logging controls log output.
type Logging struct {
	Level  string `yaml:"level" doc:"debug, info, warn or error."`
	Format string `yaml:"format" doc:"text or json."`
}

func (Logging) Defaults() Logging { return Logging{Level: "info", Format: "text"} }

func (l Logging) Validate() error {
	var errs []error
	switch l.Level {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fieldError("logging.level", fmt.Sprintf("%q is not a level", l.Level), "use debug, info, warn or error"))
	}
	switch l.Format {
	case "text", "json":
	default:
		errs = append(errs, fieldError("logging.format", fmt.Sprintf("%q is not a format", l.Format), "use text or json"))
	}
	return joinErrs(errs)
}

// Metrics controls the Prometheus endpoint.
type Metrics struct {
	Enabled bool `yaml:"enabled" doc:"Serve Prometheus metrics at /metrics on the HTTP listener."`
}

func (Metrics) Defaults() Metrics { return Metrics{Enabled: true} }

func (Metrics) Validate() error { return nil }

// RoomServer configures rooms.
type RoomServer struct {
	DefaultRoomVersion  string `yaml:"default_room_version" doc:"Room version for new rooms when the client does not ask for one."`
	EncryptPrivateRooms bool   `yaml:"encrypt_private_rooms" doc:"Turn on end-to-end encryption (m.room.encryption) in new private rooms and direct chats."`
	// PrecomputedSignatureNonces: internal/edsign's nonce pool.
	PrecomputedSignatureNonces bool `yaml:"precomputed_signature_nonces" doc:"Sign this server's events with Ed25519 nonces drawn at random and computed ahead of time (internal/edsign), which takes most of a signature's cost off the request that sends the event. Leave it off on a machine whose running memory can be copied and resumed twice: a virtual machine restored from a snapshot, a cloned VM, a process restored by CRIU. Two copies would sign different events with the same precomputed nonce, and two such signatures reveal the server's signing key. Off (the default): each signature's nonce is derived from the key and the event (RFC 8032), as crypto/ed25519 signs, and no copy of the process can leak the key."`
}

func (RoomServer) Defaults() RoomServer {
	return RoomServer{DefaultRoomVersion: "12", EncryptPrivateRooms: true}
}

func (r RoomServer) Validate() error {
	switch r.DefaultRoomVersion {
	case "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12":
		return nil
	}
	return fieldError("room_server.default_room_version", fmt.Sprintf("%q is not a supported room version", r.DefaultRoomVersion), "use 1 to 12 (12 recommended)")
}

// Federation configures server-to-server traffic.
type Federation struct {
	Enabled bool   `yaml:"enabled" doc:"Talk to other homeservers."`
	Listen  string `yaml:"listen" doc:"Address of the federation listener (TLS), e.g. :8448. Empty: no federation listener."`
	TLSCert string `yaml:"tls_cert" doc:"PEM certificate chain for the federation listener. With tls_ca_cert set, Myelin writes it here."`
	TLSKey  string `yaml:"tls_key" doc:"PEM private key for the federation listener. With tls_ca_cert set, Myelin writes it here."`
	// TLSCACert and TLSCAKey let Myelin issue its own certificate, as
	// test harnesses (Complement) and private federations need.
	TLSCACert string `yaml:"tls_ca_cert" doc:"PEM certificate of a CA that issues the federation certificate. When set (with tls_ca_key), Myelin writes tls_cert and tls_key at start unless they already hold a certificate for server_name from this CA valid for another day. Leave empty with a public CA such as Let's Encrypt."`
	TLSCAKey  string `yaml:"tls_ca_key" doc:"PEM private key (RSA, ECDSA or Ed25519) of the CA in tls_ca_cert."`
	// TrustedCAFile adds to, never replaces, the system roots (which Go
	// also reads from SSL_CERT_FILE and SSL_CERT_DIR).
	TrustedCAFile string `yaml:"trusted_ca_file" doc:"PEM file of extra CA certificates to trust, besides the system's, when connecting to other homeservers. Empty: only the system's (SSL_CERT_FILE also works)."`
	// TrustedKeyServers are notaries asked for keys a server cannot give
	// us itself; each entry pins one of the notary's own keys.
	TrustedKeyServers []string `yaml:"trusted_key_servers" doc:"Notary servers asked for other servers' signing keys when a server cannot be reached directly, one entry per notary key: \"<server_name> <key_id> <unpadded base64 public key>\", e.g. \"matrix.org ed25519:auto Noi6WqcDj0QmPxCNQqgezwTlBKrfqehY1u2FyWP9uYw\". Empty: keys are only fetched from their own servers."`
	// OldVerifyKeys are this server's former signing keys: publishing
	// them lets other servers verify events signed before a rotation.
	// Spec: server-server-api, "Publishing Keys" (old_verify_keys).
	OldVerifyKeys []string `yaml:"old_verify_keys" doc:"Signing keys this server used before, published in old_verify_keys so that events signed with them still verify, one entry per key: \"ed25519:<id> <unpadded base64 public key> <expired_ts>\" (expired_ts: milliseconds since 1970 when the key stopped being used). To rotate the key: note the current key's ID and public key (GET /_matrix/key/v2/server), move signing_key_path aside, add them here with the current time, and restart; a new key is created. Empty: no former keys."`
	KeyValidity   Duration `yaml:"key_validity" doc:"How long other servers may cache this server's signing key (valid_until_ts in GET /_matrix/key/v2/server)."`
	// MaxBackoff caps the per-destination retry interval of the sender.
	MinBackoff Duration `yaml:"min_backoff" doc:"First wait before retrying an unreachable server; it doubles on each failure up to max_backoff."`
	MaxBackoff Duration `yaml:"max_backoff" doc:"Longest wait between retries to an unreachable server."`
}

func (Federation) Defaults() Federation {
	return Federation{Enabled: false, TrustedKeyServers: []string{}, OldVerifyKeys: []string{}, KeyValidity: Duration(7 * 24 * time.Hour),
		MinBackoff: Duration(10 * time.Second), MaxBackoff: Duration(24 * time.Hour)}
}

// TrustedKeyServer is a parsed trusted_key_servers entry.
type TrustedKeyServer struct {
	ServerName string
	KeyID      string
	PublicKey  string // unpadded base64
}

// ParseTrustedKeyServers parses trusted_key_servers.
func (f Federation) ParseTrustedKeyServers() ([]TrustedKeyServer, error) {
	var out []TrustedKeyServer
	for _, entry := range f.TrustedKeyServers {
		fields := strings.Fields(entry)
		if len(fields) != 3 || !validServerName(fields[0]) || !strings.HasPrefix(fields[1], "ed25519:") {
			return nil, fieldError("federation_api.trusted_key_servers", fmt.Sprintf("%q is not \"<server_name> ed25519:<id> <base64 key>\"", entry),
				"e.g. \"matrix.org ed25519:auto Noi6WqcDj0QmPxCNQqgezwTlBKrfqehY1u2FyWP9uYw\"")
		}
		out = append(out, TrustedKeyServer{ServerName: fields[0], KeyID: fields[1], PublicKey: strings.TrimRight(fields[2], "=")})
	}
	return out, nil
}

// OldVerifyKey is a parsed old_verify_keys entry.
type OldVerifyKey struct {
	KeyID     string
	PublicKey []byte // 32 bytes of Ed25519 public key
	ExpiredTS int64
}

// ParseOldVerifyKeys parses old_verify_keys.
func (f Federation) ParseOldVerifyKeys() ([]OldVerifyKey, error) {
	var out []OldVerifyKey
	seen := map[string]bool{}
	for _, entry := range f.OldVerifyKeys {
		fields := strings.Fields(entry)
		bad := func(why string) error {
			return fieldError("federation_api.old_verify_keys", fmt.Sprintf("%q: %s", entry, why),
				"write \"ed25519:<id> <unpadded base64 public key> <expired_ts in ms>\", e.g. \"ed25519:a_Xy12 Noi6WqcDj0QmPxCNQqgezwTlBKrfqehY1u2FyWP9uYw 1790000000000\"")
		}
		if len(fields) != 3 {
			return nil, bad("want three fields")
		}
		if !strings.HasPrefix(fields[0], "ed25519:") || len(fields[0]) == len("ed25519:") {
			return nil, bad("the key ID must start with ed25519:")
		}
		if seen[fields[0]] {
			return nil, bad("key ID listed twice")
		}
		seen[fields[0]] = true
		key, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(fields[1], "="))
		if err != nil || len(key) != 32 {
			return nil, bad("the public key is not 32 bytes of base64")
		}
		expired, err := strconv.ParseInt(fields[2], 10, 64)
		if err != nil || expired <= 0 {
			return nil, bad("expired_ts is not a positive integer")
		}
		out = append(out, OldVerifyKey{KeyID: fields[0], PublicKey: key, ExpiredTS: expired})
	}
	return out, nil
}

func (f Federation) Validate() error {
	var errs []error
	if f.Listen != "" {
		if _, _, err := net.SplitHostPort(f.Listen); err != nil {
			errs = append(errs, fieldError("federation_api.listen", fmt.Sprintf("%q is not host:port", f.Listen), "e.g. :8448"))
		}
		if f.TLSCert == "" || f.TLSKey == "" {
			errs = append(errs, fieldError("federation_api.tls_cert", "tls_cert and tls_key are required when listen is set",
				"point them at a PEM certificate and key (or, with tls_ca_cert and tls_ca_key, at where Myelin should write them)"))
		}
	}
	if (f.TLSCACert == "") != (f.TLSCAKey == "") {
		errs = append(errs, fieldError("federation_api.tls_ca_cert", "tls_ca_cert and tls_ca_key must be set together",
			"set both to the CA's PEM certificate and key, or neither"))
	}
	if _, err := f.ParseTrustedKeyServers(); err != nil {
		errs = append(errs, err)
	}
	if _, err := f.ParseOldVerifyKeys(); err != nil {
		errs = append(errs, err)
	}
	if f.KeyValidity < 0 || f.MaxBackoff < 0 || f.MinBackoff < 0 {
		errs = append(errs, fieldError("federation_api.key_validity", "key_validity and max_backoff must not be negative", "use e.g. 168h and 24h"))
	}
	if f.TLSCACert != "" && (f.TLSCert == "" || f.TLSKey == "") {
		errs = append(errs, fieldError("federation_api.tls_cert", "is empty while tls_ca_cert is set",
			"set tls_cert and tls_key to the paths where the issued certificate and key should be written"))
	}
	return joinErrs(errs)
}

func joinErrs(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	msgs := make([]string, len(errs))
	for i, e := range errs {
		msgs[i] = e.Error()
	}
	return fmt.Errorf("%s", strings.Join(msgs, "\n"))
}

// redactRedisErr is err's message without the password in raw, which
// the URL parser may quote.
func redactRedisErr(err error, raw string) string {
	u, perr := url.Parse(raw)
	if perr != nil {
		return "not a URL"
	}
	msg := err.Error()
	if p, ok := u.User.Password(); ok && p != "" {
		msg = strings.ReplaceAll(msg, p, "xxxxx")
	}
	return msg
}
