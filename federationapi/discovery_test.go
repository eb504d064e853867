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
