package appservice

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync/atomic"
	"testing"
	"time"
)

// A service that does not answer in time is skipped: the lookup answers
// with the others' results once the client's timeout has passed, not
// after the slow service, and the services are asked in parallel.
// Spec: client-server-api, "GET /_matrix/client/v3/thirdparty/user/{protocol}"
// (the homeserver's merging of the services' answers is its own).
func TestThirdPartyLookupSkipsTimeout(t *testing.T) {
	release := make(chan struct{})
	var inFlight, maxInFlight atomic.Int32
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for m := maxInFlight.Load(); n > m && !maxInFlight.CompareAndSwap(m, n); m = maxInFlight.Load() {
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	defer close(release)
	fast := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer fast-hs" || r.URL.Query().Get("nickname") != "bob" {
			w.WriteHeader(http.StatusForbidden)
			return
		}
		_, _ = w.Write([]byte(`[{"userid":"@fast_bob:localhost","protocol":"irc","fields":{"nickname":"bob"}}]`))
	}))
	defer fast.Close()
	var regs []*Registration
	for i, u := range []string{slow.URL, fast.URL, slow.URL} {
		id := [...]string{"slow1", "fast", "slow2"}[i]
		reg, err := ParseRegistration(fmt.Appendf(nil, "id: %s\nurl: %s\nas_token: %s-as\nhs_token: %s-hs\nsender_localpart: %s_bot\nprotocols: [irc]\nnamespaces: {}\n",
			id, u, id, id, id), id)
		if err != nil {
			t.Fatal(err)
		}
		regs = append(regs, reg)
	}
	registry, err := NewRegistry(regs)
	if err != nil {
		t.Fatal(err)
	}
	const timeout = 500 * time.Millisecond
	s := &Server{deps: Deps{Registry: registry}, log: slog.New(slog.DiscardHandler), client: &http.Client{Timeout: timeout}}
	start := time.Now()
	results, known := s.ThirdPartyLookup(context.Background(), ThirdPartyUser, "irc", url.Values{"nickname": {"bob"}})
	elapsed := time.Since(start)
	if !known || len(results) != 1 || results[0]["userid"] != "@fast_bob:localhost" {
		t.Fatalf("results %v (known %v)", results, known)
	}
	// The slow services were given up at the client's timeout, and asked
	// at the same time: one after the other, neither would have seen the
	// other's request in flight (a bound on the elapsed time would say the
	// same but fail on a loaded machine).
	if elapsed < timeout {
		t.Fatalf("the lookup took %v, less than the timeout of %v", elapsed, timeout)
	}
	if got := maxInFlight.Load(); got != 2 {
		t.Fatalf("at most %d of the two slow services' requests were in flight at once; want 2 (asked in parallel)", got)
	}
}
