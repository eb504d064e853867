package federationapi

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// TestResolve follows server-server-api, "Resolving server names", step
// by step, with fake DNS and a fake .well-known server.
func TestResolve(t *testing.T) {
	t.Parallel()
	wk := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Host {
		case "wk.example":
			w.Header().Set("Cache-Control", "max-age=60")
			_, _ = w.Write([]byte(`{"m.server":"delegated.example:9000"}`))
		case "wk2.example":
			_, _ = w.Write([]byte(`{"m.server":"deleg2.example"}`))
		case "wkip.example":
			_, _ = w.Write([]byte(`{"m.server":"10.0.0.1"}`))
		case "huge.example":
			_, _ = w.Write(make([]byte, wellKnownMaxBytes+10))
		default:
			http.NotFound(w, r)
		}
	}))
	defer wk.Close()
	client := wk.Client()
	transport := client.Transport.(*http.Transport).Clone()
	// The fake serves every name with one certificate; discovery, not
	// certificate checking, is under test here.
	transport.TLSClientConfig.InsecureSkipVerify = true
	transport.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, wk.Listener.Addr().String())
	}
	srv := map[string][]*net.SRV{
		"_matrix-fed._tcp.deleg2.example": {{Target: "srv.example.", Port: 7000}},
		"_matrix._tcp.old.example":        {{Target: "srvold.example.", Port: 5000}},
		"_matrix-fed._tcp.both.example":   {{Target: "new.example.", Port: 1}},
		"_matrix._tcp.both.example":       {{Target: "legacy.example.", Port: 2}},
	}
	r := &resolver{
		lookupSRV: func(_ context.Context, service, proto, name string) (string, []*net.SRV, error) {
			if recs, ok := srv["_"+service+"._"+proto+"."+name]; ok {
				return "", recs, nil
			}
			return "", nil, &net.DNSError{Err: "no such host", IsNotFound: true}
		},
		wellKnownClient: &http.Client{Transport: transport, Timeout: time.Second},
		now:             time.Now,
		cache:           map[string]wellKnownEntry{},
	}
	cases := []struct {
		name string
		want target
	}{
		{"1.2.3.4", target{"1.2.3.4:8448", "1.2.3.4", "1.2.3.4"}},
		{"[::1]:8449", target{"[::1]:8449", "::1", "[::1]:8449"}},
		{"example.org:1234", target{"example.org:1234", "example.org", "example.org:1234"}},
		{"wk.example", target{"delegated.example:9000", "delegated.example", "delegated.example:9000"}},
		{"wk2.example", target{"srv.example:7000", "deleg2.example", "deleg2.example"}},
		{"wkip.example", target{"10.0.0.1:8448", "10.0.0.1", "10.0.0.1"}},
		{"huge.example", target{"huge.example:8448", "huge.example", "huge.example"}},
		{"old.example", target{"srvold.example:5000", "old.example", "old.example"}},
		{"both.example", target{"new.example:1", "both.example", "both.example"}},
		{"plain.example", target{"plain.example:8448", "plain.example", "plain.example"}},
	}
	for _, tc := range cases {
		got, err := r.resolve(context.Background(), tc.name)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if len(got) == 0 || got[0] != tc.want {
			t.Errorf("%s: got %+v, want %+v", tc.name, got, tc.want)
		}
	}
	if _, err := r.resolve(context.Background(), "bad name!"); err == nil {
		t.Errorf("invalid server name accepted")
	}
	// The well-known answer is cached.
	if e := r.cache["wk.example"]; e.server != "delegated.example:9000" || time.Until(e.expires) > time.Minute {
		t.Errorf("cache entry %+v", e)
	}
	if cacheTTL("max-age=999999") != wellKnownMaxTTL || cacheTTL("") != wellKnownDefaultTTL || cacheTTL("no-store") != 0 {
		t.Errorf("cacheTTL caps wrong")
	}
	_ = errors.New
}

// TestResolveCachesSRV: SRV answers are looked up once per name, not per
// request. Complement's TestACLsForEDUs failed because every outbound
// transaction looked _matrix-fed._tcp.hs1 up again and Docker's DNS now
// and then took its 5 s timeout to answer, holding the EDUs back. An
// answer (or NXDOMAIN) stands for srvTTL, a failed lookup for
// srvErrorTTL.
func TestResolveCachesSRV(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_800_000_000, 0)
	lookups := map[string]int{}
	failing := map[string]bool{}
	r := &resolver{
		lookupSRV: func(_ context.Context, service, proto, name string) (string, []*net.SRV, error) {
			key := "_" + service + "._" + proto + "." + name
			lookups[key]++
			if failing[name] {
				return "", nil, &net.DNSError{Err: "i/o timeout", IsTimeout: true}
			}
			if key == "_matrix-fed._tcp.srv.example" {
				return "", []*net.SRV{{Target: "host.example.", Port: 7000}}, nil
			}
			return "", nil, &net.DNSError{Err: "no such host", IsNotFound: true}
		},
		// No .well-known anywhere: every name falls through to SRV.
		wellKnownClient: &http.Client{Transport: roundTripFunc(func(*http.Request) (*http.Response, error) {
			return nil, errors.New("no .well-known")
		})},
		now:   func() time.Time { return now },
		cache: map[string]wellKnownEntry{},
	}
	resolve := func(name string) target {
		t.Helper()
		got, err := r.resolve(context.Background(), name)
		if err != nil || len(got) == 0 {
			t.Fatalf("%s: %v %v", name, got, err)
		}
		return got[0]
	}
	failing["flaky.example"] = true
	for i := 0; i < 3; i++ {
		if got := resolve("srv.example"); got != (target{"host.example:7000", "srv.example", "srv.example"}) {
			t.Fatalf("srv.example: %+v", got)
		}
		if got := resolve("plain.example"); got != (target{"plain.example:8448", "plain.example", "plain.example"}) {
			t.Fatalf("plain.example: %+v", got)
		}
		if got := resolve("flaky.example"); got.Addr != "flaky.example:8448" {
			t.Fatalf("flaky.example: %+v", got)
		}
	}
	want := map[string]int{
		"_matrix-fed._tcp.srv.example":   1,
		"_matrix-fed._tcp.plain.example": 1, "_matrix._tcp.plain.example": 1,
		"_matrix-fed._tcp.flaky.example": 1, "_matrix._tcp.flaky.example": 1,
	}
	for key, n := range want {
		if lookups[key] != n {
			t.Errorf("%s looked up %d times, want %d (all lookups: %v)", key, lookups[key], n, lookups)
		}
	}

	// A failed lookup is retried after srvErrorTTL; answers stand longer.
	failing["flaky.example"] = false
	now = now.Add(srvErrorTTL + time.Second)
	resolve("flaky.example")
	resolve("srv.example")
	if lookups["_matrix-fed._tcp.flaky.example"] != 2 || lookups["_matrix-fed._tcp.srv.example"] != 1 {
		t.Errorf("after srvErrorTTL: %v", lookups)
	}
	now = now.Add(srvTTL)
	resolve("srv.example")
	if lookups["_matrix-fed._tcp.srv.example"] != 2 {
		t.Errorf("after srvTTL the answer was not looked up again: %v", lookups)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestWellKnownFailuresCached: a .well-known lookup that gets no answer
// (the host is down) is cached, so requests meanwhile do not wait on it,
// and retried after wellKnownRetryMin, then after twice as long for each
// failure in a row, never more than wellKnownErrorTTL; once the host
// answers, its delegation is used. An invalid answer (404) stands for
// wellKnownErrorTTL. A lookup the caller gave up on is not cached.
// Spec: server-server-api, "Resolving server names" (step 3: errors
// cached for up to an hour, exponential back-off for repeated failures).
func TestWellKnownFailuresCached(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_800_000_000, 0)
	fetches := map[string]int{}
	up := map[string]bool{}
	r := &resolver{
		lookupSRV: func(context.Context, string, string, string) (string, []*net.SRV, error) {
			return "", nil, &net.DNSError{Err: "no such host", IsNotFound: true}
		},
		wellKnownClient: &http.Client{Transport: roundTripFunc(func(req *http.Request) (*http.Response, error) {
			fetches[req.URL.Host]++
			if err := req.Context().Err(); err != nil {
				return nil, err
			}
			switch {
			case req.URL.Host == "none.example":
				return &http.Response{StatusCode: http.StatusNotFound, Body: http.NoBody, Request: req}, nil
			case req.URL.Host == "proxy.example":
				return &http.Response{StatusCode: http.StatusBadGateway, Body: http.NoBody, Request: req}, nil
			case up[req.URL.Host]:
				rec := httptest.NewRecorder()
				_, _ = rec.WriteString(`{"m.server":"real.example:8008"}`)
				resp := rec.Result()
				resp.Request = req
				return resp, nil
			}
			return nil, errors.New("connection refused")
		})},
		now:   func() time.Time { return now },
		cache: map[string]wellKnownEntry{},
	}
	resolve := func(name string) string {
		t.Helper()
		got, err := r.resolve(context.Background(), name)
		if err != nil || len(got) == 0 {
			t.Fatalf("%s: %v %v", name, got, err)
		}
		return got[0].Addr
	}
	start := now
	at := func(d time.Duration) { now = start.Add(d) }
	expect := func(host string, n int, when string) {
		t.Helper()
		if fetches[host] != n {
			t.Fatalf("%s: %s fetched %d times, want %d", when, host, fetches[host], n)
		}
	}

	// down.example: no answer at 0, retried at 2 min, then 4 min
	// later, then 8 min later (each failure in between served from the
	// cache), then up.
	for _, host := range []string{"down.example", "proxy.example", "none.example"} {
		if got := resolve(host); got != host+":8448" {
			t.Fatalf("%s without .well-known resolved to %s", host, got)
		}
		resolve(host)
		expect(host, 1, "right after the first failure")
	}
	at(wellKnownRetryMin - time.Second)
	resolve("down.example")
	resolve("proxy.example")
	expect("down.example", 1, "before wellKnownRetryMin")
	expect("proxy.example", 1, "before wellKnownRetryMin")
	at(wellKnownRetryMin + time.Second)
	resolve("down.example")
	resolve("proxy.example") // a 5xx is no answer either
	expect("down.example", 2, "after wellKnownRetryMin")
	expect("proxy.example", 2, "after wellKnownRetryMin")
	at(wellKnownRetryMin + 2*wellKnownRetryMin - time.Second)
	resolve("down.example")
	expect("down.example", 2, "before the doubled back-off")
	at(wellKnownRetryMin + 2*wellKnownRetryMin + 2*time.Second)
	resolve("down.example")
	expect("down.example", 3, "after the doubled back-off")
	up["down.example"] = true
	at(wellKnownRetryMin + 2*wellKnownRetryMin + 4*wellKnownRetryMin + 3*time.Second)
	if got := resolve("down.example"); got != "real.example:8008" {
		t.Fatalf("once up, down.example resolved to %s, want its delegation", got)
	}
	expect("down.example", 4, "once up")
	// The back-off never exceeds wellKnownErrorTTL.
	r.cache["flaky.example"] = wellKnownEntry{failures: 40}
	resolve("flaky.example")
	if e := r.cache["flaky.example"]; e.failures != 41 || e.expires != now.Add(wellKnownErrorTTL) {
		t.Fatalf("after 41 failures in a row the entry is %+v, want a retry after wellKnownErrorTTL", e)
	}

	// An invalid answer stands for wellKnownErrorTTL.
	at(wellKnownErrorTTL - time.Second)
	resolve("none.example")
	expect("none.example", 1, "before wellKnownErrorTTL")
	at(wellKnownErrorTTL + time.Second)
	resolve("none.example")
	expect("none.example", 2, "after wellKnownErrorTTL")

	// A lookup whose caller gave up teaches nothing.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := r.resolve(ctx, "gone.example"); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.cache["gone.example"]; ok {
		t.Fatal("a lookup cut short by the caller was cached")
	}
}
