package federationapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
)

// target is where to send a request for a server name: the address to
// dial, the name the TLS certificate must carry, and the Host header.
type target struct {
	Addr    string // host:port to connect to
	TLSName string // certificate name (hostname or IP)
	Host    string // Host header
}

// Well-known caps. Spec: server-server-api, "Server discovery"; security
// case 28 (a huge or slow .well-known must not hurt us).
const (
	wellKnownMaxBytes   = 50 * 1024
	wellKnownTimeout    = 10 * time.Second
	wellKnownDefaultTTL = 24 * time.Hour
	wellKnownMaxTTL     = 48 * time.Hour
	// A .well-known that answers without a valid m.server (404, another
	// 4xx, bad JSON, no or an invalid m.server, too large) is an answer:
	// the host delegates nowhere. It stands for wellKnownErrorTTL, the
	// spec's "errors are recommended to be cached for up to an hour"
	// (Synapse caches an invalid .well-known for an hour too).
	wellKnownErrorTTL = time.Hour
	// A lookup that gets no answer (no connection, a TLS failure, a
	// timeout, a 5xx from a proxy whose backend is down) tells nothing
	// about the delegation. It is retried after wellKnownRetryMin, then
	// after twice as long for each further failure in a row, up to
	// wellKnownErrorTTL: the spec encourages exponential back-off for
	// repeated failures. Two minutes at first, as Synapse waits before
	// asking again a host it recently had a valid .well-known from: for
	// an hour of a brief outage, every request to a delegated server
	// would go to <host>:8448, which is usually not where it listens.
	wellKnownRetryMin = 2 * time.Minute
	// SRV answers are cached too: Go's resolver neither caches nor tells
	// the record's TTL, and a lookup may stall for the resolver's timeout
	// (5 s by default) — for every request, if uncached. An answer, or
	// NXDOMAIN, stands for srvTTL; a failed lookup (a timeout) is
	// retried after srvErrorTTL.
	srvTTL      = time.Hour
	srvErrorTTL = time.Minute
)

// resolver implements server discovery. LookupSRV and the HTTP client
// are replaceable so tests can run it against fake DNS and servers.
type resolver struct {
	lookupSRV func(ctx context.Context, service, proto, name string) (string, []*net.SRV, error)
	// wellKnown fetches https://<host>/.well-known/matrix/server.
	wellKnownClient *http.Client
	now             func() time.Time

	mu    sync.Mutex
	cache map[string]wellKnownEntry // guarded by mu
	srv   map[string]srvEntry       // "_service._tcp.host"; guarded by mu
}

type srvEntry struct {
	records []*net.SRV // nil when the lookup failed or found none
	expires time.Time
}

type wellKnownEntry struct {
	server  string // m.server, "" when the lookup failed
	expires time.Time
	// failures counts the lookups in a row that got no answer (their
	// back-off doubles with each); 0 after an answer.
	failures int
}

// resolve returns the targets for serverName, in the order to try them.
// Spec: server-server-api, "Resolving server names".
func (r *resolver) resolve(ctx context.Context, serverName string) ([]target, error) {
	host, port, ok := spec.ParseAndValidateServerName(spec.ServerName(serverName))
	if !ok {
		return nil, fmt.Errorf("invalid server name %q", serverName)
	}
	// 1. IP literal: that address, the given port or 8448.
	// 2. Hostname with an explicit port: that host and port.
	if t, ok := literalOrPort(host, port, serverName); ok {
		return []target{t}, nil
	}
	// 3. .well-known delegation.
	if delegated := r.wellKnown(ctx, host); delegated != "" {
		dHost, dPort, ok := spec.ParseAndValidateServerName(spec.ServerName(delegated))
		if ok {
			// 3.1 / 3.2: IP literal or explicit port.
			if t, ok := literalOrPort(dHost, dPort, delegated); ok {
				return []target{t}, nil
			}
			// 3.3 / 3.4: SRV on the delegated hostname; 3.5: port 8448.
			return r.srvOr8448(ctx, dHost), nil
		}
	}
	// 4 / 5: SRV on the server name; 6: port 8448.
	return r.srvOr8448(ctx, host), nil
}

func literalOrPort(host string, port int, serverName string) (target, bool) {
	bare := strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if net.ParseIP(bare) != nil {
		if port < 0 {
			port = 8448
		}
		return target{Addr: net.JoinHostPort(bare, strconv.Itoa(port)), TLSName: bare, Host: serverName}, true
	}
	if port >= 0 {
		return target{Addr: net.JoinHostPort(host, strconv.Itoa(port)), TLSName: host, Host: serverName}, true
	}
	return target{}, false
}

// srvOr8448 looks up _matrix-fed._tcp.<host>, then the deprecated
// _matrix._tcp.<host>; with neither, <host>:8448. The certificate and
// Host header name <host> in every case.
func (r *resolver) srvOr8448(ctx context.Context, host string) []target {
	for _, service := range []string{"matrix-fed", "matrix"} {
		records := r.cachedSRV(ctx, service, host)
		if len(records) == 0 {
			continue
		}
		var out []target
		for _, rec := range records {
			name := strings.TrimSuffix(rec.Target, ".")
			if name == "" {
				continue
			}
			out = append(out, target{Addr: net.JoinHostPort(name, strconv.Itoa(int(rec.Port))), TLSName: host, Host: host})
		}
		if len(out) > 0 {
			return out
		}
	}
	return []target{{Addr: net.JoinHostPort(host, "8448"), TLSName: host, Host: host}}
}

// cachedSRV returns the SRV records of _service._tcp.host, looking them
// up only when the cached answer has expired.
func (r *resolver) cachedSRV(ctx context.Context, service, host string) []*net.SRV {
	key := "_" + service + "._tcp." + host
	now := r.now()
	r.mu.Lock()
	if e, ok := r.srv[key]; ok && now.Before(e.expires) {
		r.mu.Unlock()
		return e.records
	}
	r.mu.Unlock()
	_, records, err := r.lookupSRV(ctx, service, "tcp", host)
	ttl := srvTTL
	var dnsErr *net.DNSError
	if err != nil {
		records = nil
		if !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
			ttl = srvErrorTTL
		}
	}
	if ctx.Err() != nil {
		return records // our caller gave up: nothing learnt about the name
	}
	r.mu.Lock()
	if r.srv == nil || len(r.srv) > 10000 {
		r.srv = map[string]srvEntry{}
	}
	r.srv[key] = srvEntry{records: records, expires: now.Add(ttl)}
	r.mu.Unlock()
	return records
}

// wellKnown returns the m.server of https://host/.well-known/matrix/server,
// or "" when there is none; results (failures too) are cached.
// Spec: server-server-api, "Resolving server names" (step 3).
func (r *resolver) wellKnown(ctx context.Context, host string) string {
	now := r.now()
	r.mu.Lock()
	prev, ok := r.cache[host]
	if ok && now.Before(prev.expires) {
		r.mu.Unlock()
		return prev.server
	}
	r.mu.Unlock()
	server, ttl, err := r.fetchWellKnown(ctx, host)
	failures := 0
	var noAnswer *wellKnownNoAnswer
	switch {
	case err == nil:
	case errors.As(err, &noAnswer):
		if ctx.Err() != nil {
			return "" // our caller gave up: nothing learnt about the host
		}
		failures = prev.failures + 1
		server, ttl = "", wellKnownErrorTTL
		if shift := failures - 1; shift < 6 {
			ttl = min(wellKnownRetryMin<<shift, wellKnownErrorTTL)
		}
	default:
		server, ttl = "", wellKnownErrorTTL
	}
	r.mu.Lock()
	if r.cache == nil || len(r.cache) > 10000 {
		r.cache = map[string]wellKnownEntry{}
	}
	r.cache[host] = wellKnownEntry{server: server, expires: now.Add(ttl), failures: failures}
	r.mu.Unlock()
	return server
}

// wellKnownNoAnswer is a .well-known lookup that got no answer from the
// host (see wellKnownRetryMin), as opposed to an invalid answer.
type wellKnownNoAnswer struct{ err error }

func (e *wellKnownNoAnswer) Error() string { return "well-known: no answer: " + e.err.Error() }
func (e *wellKnownNoAnswer) Unwrap() error { return e.err }

func (r *resolver) fetchWellKnown(ctx context.Context, host string) (string, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, wellKnownTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+host+"/.well-known/matrix/server", nil)
	if err != nil {
		return "", 0, err
	}
	resp, err := r.wellKnownClient.Do(req)
	if err != nil {
		return "", 0, &wellKnownNoAnswer{err}
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 500 {
		return "", 0, &wellKnownNoAnswer{fmt.Errorf("status %d", resp.StatusCode)}
	}
	if resp.StatusCode != http.StatusOK {
		return "", 0, fmt.Errorf("well-known: status %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, wellKnownMaxBytes+1))
	if err != nil {
		return "", 0, &wellKnownNoAnswer{err} // the connection broke or timed out
	}
	if len(body) > wellKnownMaxBytes {
		return "", 0, errors.New("well-known: response too large")
	}
	var wk struct {
		Server string `json:"m.server"`
	}
	if err := json.Unmarshal(body, &wk); err != nil || wk.Server == "" {
		return "", 0, errors.New("well-known: no m.server")
	}
	if _, _, ok := spec.ParseAndValidateServerName(spec.ServerName(wk.Server)); !ok {
		return "", 0, fmt.Errorf("well-known: invalid m.server %q", wk.Server)
	}
	return wk.Server, cacheTTL(resp.Header.Get("Cache-Control")), nil
}

// cacheTTL reads max-age from Cache-Control, capped at wellKnownMaxTTL;
// no-store or no-cache mean do not cache; default 24 hours.
func cacheTTL(cc string) time.Duration {
	for _, part := range strings.Split(cc, ",") {
		part = strings.TrimSpace(strings.ToLower(part))
		if part == "no-store" || part == "no-cache" {
			return 0
		}
		if v, ok := strings.CutPrefix(part, "max-age="); ok {
			if secs, err := strconv.Atoi(v); err == nil && secs >= 0 {
				return min(time.Duration(secs)*time.Second, wellKnownMaxTTL)
			}
		}
	}
	return wellKnownDefaultTTL
}
