package httpx

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"runtime/debug"
	"strings"
	"time"

	"github.com/myelin-chat/myelin/internal/mxerr"
)

// statusRecorder remembers the status a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	status int
	bytes  int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	n, err := s.ResponseWriter.Write(b)
	s.bytes += n
	return n, err
}

func (s *statusRecorder) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// RequestLog gives each request an ID (echoed in the X-Request-Id response
// header), a logger carrying it, and one log line when it ends. It never
// logs bodies, query strings (they may hold access tokens) or headers.
func RequestLog(base *slog.Logger) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			start := time.Now()
			id := newRequestID()
			// One node carries the request ID, its log attribute and its
			// header value: a request's context and headers cost one
			// allocation here, not one per piece.
			scope := &lazyLogger{base: base, one: true, key: "req", value: id, requestID: id}
			scope.header[0] = id
			w.Header()["X-Request-Id"] = scope.header[:]
			ctx := context.WithValue(r.Context(), loggerKey, scope)
			rec := &statusRecorder{ResponseWriter: w}
			next.ServeHTTP(rec, r.WithContext(ctx))
			level := slog.LevelDebug
			if rec.status >= 500 {
				level = slog.LevelWarn
			}
			if base.Enabled(ctx, level) {
				Logger(ctx).Log(ctx, level, "request",
					"method", r.Method, "path", r.URL.Path, "status", rec.status,
					"bytes", rec.bytes, "dur_ms", float64(time.Since(start).Microseconds())/1000)
			}
		})
	}
}

func newRequestID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Recover turns a panic in a handler into 500 M_UNKNOWN and one log line
// with the stack, instead of a dropped connection.
func Recover(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				Logger(r.Context()).Error("panic in handler", "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
				WriteError(w, r, mxerr.New(mxerr.Unknown, "internal server error"))
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// The CORS headers' values, shared by every response rather than
// allocated per response (Header.Set would make a slice for each). Each
// has length and capacity 1, so Header.Add appends into a new array, and
// Set replaces the slice; nothing may write into their elements.
var (
	corsAllowOrigin   = []string{"*"}
	corsAllowMethods  = []string{"GET, POST, PUT, DELETE, OPTIONS"}
	corsAllowHeaders  = []string{"X-Requested-With, Content-Type, Authorization"}
	corsExposeHeaders = []string{"Retry-After, X-Request-Id"}
)

// CORS adds the headers the spec asks every client-server response to carry
// and answers preflight OPTIONS requests.
//
// Spec: client-server-api, "Web Browser Clients".
func CORS(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h["Access-Control-Allow-Origin"] = corsAllowOrigin
		h["Access-Control-Allow-Methods"] = corsAllowMethods
		h["Access-Control-Allow-Headers"] = corsAllowHeaders
		h["Access-Control-Expose-Headers"] = corsExposeHeaders
		if r.Method == http.MethodOptions {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// BodyLimit caps request bodies at max bytes; reading past it fails with
// *http.MaxBytesError, which WriteError maps to 413 M_TOO_LARGE. A declared
// Content-Length over the limit is refused before the body is read.
func BodyLimit(max int64) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.ContentLength > max {
				WriteError(w, r, mxerr.New(mxerr.TooLarge, "request body too large"))
				return
			}
			// A request without a body (http.NoBody: most GETs, /sync's
			// long polls among them) has nothing to limit.
			if r.Body != nil && r.Body != http.NoBody {
				r.Body = http.MaxBytesReader(w, r.Body, max)
			}
			next.ServeHTTP(w, r)
		})
	}
}

// NotFound answers unknown paths with 404 M_UNRECOGNIZED.
//
// Spec: client-server-api, "API Standards": unknown endpoints get
// 404 M_UNRECOGNIZED, unsupported methods 405 M_UNRECOGNIZED.
func NotFound(w http.ResponseWriter, r *http.Request) {
	WriteError(w, r, mxerr.New(mxerr.Unrecognized, "unrecognized request"))
}

// MethodNotAllowed answers a known path with the wrong method.
func MethodNotAllowed(w http.ResponseWriter, r *http.Request) {
	WriteError(w, r, mxerr.New(mxerr.Unrecognized, "method not allowed").WithStatus(http.StatusMethodNotAllowed))
}

// ClientIPResolver finds the address a request came from. X-Forwarded-For
// is believed only when the direct peer is a configured trusted proxy, so a
// client cannot forge its way past per-IP rate limits.
type ClientIPResolver struct {
	trusted []netip.Prefix
}

// NewClientIPResolver parses the trusted proxy CIDRs (or bare addresses).
func NewClientIPResolver(trustedProxies []string) (*ClientIPResolver, error) {
	c := &ClientIPResolver{}
	for _, s := range trustedProxies {
		if !strings.Contains(s, "/") {
			addr, err := netip.ParseAddr(s)
			if err != nil {
				return nil, fmt.Errorf("trusted proxy %q: %w", s, err)
			}
			c.trusted = append(c.trusted, netip.PrefixFrom(addr, addr.BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("trusted proxy %q: %w", s, err)
		}
		c.trusted = append(c.trusted, p.Masked())
	}
	return c, nil
}

// ClientIP returns the client's IP address as a string.
func (c *ClientIPResolver) ClientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	peer, err := netip.ParseAddr(host)
	if err != nil || c == nil || !c.isTrusted(peer) {
		return host
	}
	// Walk X-Forwarded-For from the right, skipping trusted proxies; the
	// first untrusted hop is the client.
	hops := strings.Split(r.Header.Get("X-Forwarded-For"), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		addr, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			break
		}
		if !c.isTrusted(addr) {
			return addr.Unmap().String()
		}
	}
	return host
}

func (c *ClientIPResolver) isTrusted(addr netip.Addr) bool {
	addr = addr.Unmap()
	for _, p := range c.trusted {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// legacyClientPrefix is the prefix of the client-server API before spec
// v1.1 re-versioned every endpoint from r0 to v3 (MSC2844) with the same
// semantics.
const legacyClientPrefix = "/_matrix/client/r0/"

// LegacyClientPrefix serves /_matrix/client/r0/... as the v3 endpoint of
// the same path, as Synapse and Dendrite still do: older clients, and
// Complement, call r0 paths. It must run before routing (Router.Use).
func LegacyClientPrefix(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if rest, ok := strings.CutPrefix(r.URL.Path, legacyClientPrefix); ok {
			u := *r.URL
			u.Path = "/_matrix/client/v3/" + rest
			if raw, ok := strings.CutPrefix(u.RawPath, legacyClientPrefix); ok {
				u.RawPath = "/_matrix/client/v3/" + raw
			}
			r2 := r.Clone(r.Context())
			r2.URL = &u
			r = r2
		}
		next.ServeHTTP(w, r)
	})
}
