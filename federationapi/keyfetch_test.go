package federationapi_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/signing"
)

// TestKeysThroughTrustedNotary: when a server no longer serves its keys
// itself, they are fetched from a notary of trusted_key_servers and
// checked against the key pinned for that notary; a notary answer signed
// with another key is not trusted; with no notary, nothing is.
// Spec: server-server-api, "Querying Keys Through Another Server".
func TestKeysThroughTrustedNotary(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		notary := n.start()
		wrongKey, err := signing.Generate()
		if err != nil {
			t.Fatal(err)
		}
		wrongKey.ID = notary.HS.Key.ID
		n.trustedNotary = []string{notary.Name + " " + notary.HS.Key.ID + " " + notary.HS.Key.PublicBase64()}
		trusting := n.start()
		n.trustedNotary = []string{notary.Name + " " + wrongKey.ID + " " + wrongKey.PublicBase64()}
		mispinned := n.start()
		n.trustedNotary = nil
		alone := n.start()

		f := newFakeRemote(t, n)
		// The notary learns f's keys while f still serves them.
		if status, body := n.request(notary, "", nil, notary.Name, http.MethodGet, "/_matrix/key/v2/query/"+f.name, nil); status != http.StatusOK ||
			!strings.Contains(string(body), f.key.ID) {
			t.Fatalf("priming the notary: %d %s", status, body)
		}
		f.mu.Lock()
		f.hideKeys = true
		f.mu.Unlock()

		uri := "/_matrix/federation/v1/event/$nope"
		for _, c := range []struct {
			name string
			s    *fedServer
			want int
		}{
			{"notary with the right pinned key", trusting, http.StatusNotFound},
			{"notary pinned to another key", mispinned, http.StatusUnauthorized},
			{"no notary", alone, http.StatusUnauthorized},
		} {
			status, body := n.request(c.s, f.name, f.key, c.s.Name, http.MethodGet, uri, nil)
			if status != c.want {
				t.Errorf("%s: a request signed by %s answered %d %s, want %d", c.name, f.name, status, body, c.want)
			}
		}
		if got := f.count("/_matrix/key/v2/server"); got < 4 {
			t.Errorf("f's key endpoint was asked %d times; each server should have tried it first", got)
		}
	})
}

func TestKeyCacheValidity(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a := n.start()
		f := newFakeRemote(t, n)
		// Long enough that the second request below comes before the key
		// expires even on a loaded machine.
		const validity = 5 * time.Second
		f.mu.Lock()
		f.keyValidity = validity
		f.mu.Unlock()
		uri := "/_matrix/federation/v1/event/$nope"
		if status, body := n.request(a, f.name, f.key, a.Name, http.MethodGet, uri, nil); status != http.StatusNotFound {
			t.Fatalf("first request: %d %s", status, body)
		}
		fetched := f.count("/_matrix/key/v2/server")
		if fetched != 1 {
			t.Fatalf("key fetched %d times for the first request", fetched)
		}
		f.mu.Lock()
		f.hideKeys = true
		f.mu.Unlock()
		if status, body := n.request(a, f.name, f.key, a.Name, http.MethodGet, uri, nil); status != http.StatusNotFound {
			t.Fatalf("request while the cached key is valid: %d %s", status, body)
		}
		if got := f.count("/_matrix/key/v2/server"); got != fetched {
			t.Fatalf("key fetched again (%d times) while the cached one was valid", got)
		}
		// Past valid_until_ts. The keyring's minimum refetch interval
		// (5 s after the first fetch) is not under test here: forget the
		// fetch rather than sleep it out.
		time.Sleep(validity + 100*time.Millisecond)
		a.HS.Federation.ForgetKeyFetches()
		status, body := n.request(a, f.name, f.key, a.Name, http.MethodGet, uri, nil)
		if status != http.StatusUnauthorized {
			t.Errorf("request after the key expired, with the key no longer served: %d %s, want 401", status, body)
		}
		if got := f.count("/_matrix/key/v2/server"); got <= fetched {
			t.Errorf("the expired key was not fetched again")
		}
	})
}

// TestKeyFetchAfterOutage: a server whose key document cannot be had (an
// outage, a partition) and that meanwhile signs with a key A has never
// seen is refused (401) while it stays unreachable; once it is back, the
// next request signed with that key makes A fetch the keys once and is
// accepted, not refused for the seconds a failed fetch used to block
// the next one. A burst of requests naming keys A lacks, while the
// server is unreachable, makes one fetch at a time and takes the
// outcome of the fetch it waited for (at most one fetch a second).
// Spec: server-server-api, "Retrieving server keys"; issue 7.
func TestKeyFetchAfterOutage(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a := n.start()
		f := newFakeRemote(t, n)
		uri := "/_matrix/federation/v1/event/$nope" // 404 once the request is authenticated
		const keyPath = "/_matrix/key/v2/server"
		if status, body := n.request(a, f.name, f.key, a.Name, http.MethodGet, uri, nil); status != http.StatusNotFound {
			t.Fatalf("first request: %d %s", status, body)
		}
		// That successful fetch is long past (minRefetch, 5 s, is not
		// under test here).
		a.HS.Federation.ForgetKeyFetches()
		rotated, err := signing.Generate()
		if err != nil {
			t.Fatal(err)
		}
		f.mu.Lock()
		f.hideKeys, f.key = true, rotated // unreachable, and signing with a new key
		f.mu.Unlock()
		before := f.count(keyPath)
		if status, body := n.request(a, f.name, rotated, a.Name, http.MethodGet, uri, nil); status != http.StatusUnauthorized {
			t.Fatalf("request signed with a key A cannot fetch: %d %s, want 401", status, body)
		}
		if got := f.count(keyPath) - before; got != 1 {
			t.Fatalf("the unknown key made A fetch %d times, want once", got)
		}

		// A burst while unreachable: one fetch at a time, waiters take
		// its outcome.
		before = f.count(keyPath)
		start := time.Now()
		var wg sync.WaitGroup
		for range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				other, err := signing.Generate()
				if err != nil {
					t.Error(err)
					return
				}
				if status, body := n.request(a, f.name, other, a.Name, http.MethodGet, uri, nil); status != http.StatusUnauthorized {
					t.Errorf("request signed with an unknown key while unreachable: %d %s, want 401", status, body)
				}
			}()
		}
		wg.Wait()
		if got, most := f.count(keyPath)-before, 1+int(time.Since(start)/time.Second); got < 1 || got > most {
			t.Errorf("a burst of 6 requests naming unknown keys made %d fetches in %v, want 1 to %d", got, time.Since(start), most)
		}

		// Back: the next request is accepted after one fetch.
		f.mu.Lock()
		f.hideKeys = false
		f.mu.Unlock()
		before = f.count(keyPath)
		if status, body := n.request(a, f.name, rotated, a.Name, http.MethodGet, uri, nil); status != http.StatusNotFound {
			t.Fatalf("first request once the server is reachable again: %d %s, want it accepted (404 for the unknown event)", status, body)
		}
		if got := f.count(keyPath) - before; got != 1 {
			t.Errorf("A fetched the keys %d times to accept it, want once", got)
		}
	})
}

// TestKeyRotatedRightAfterFetch: a server that signs with a new key
// moments after A fetched its keys (a rotation, or another server now
// on the same host and port, as in Complement's runs) is accepted once A
// may fetch its keys again, minRefetch after the last fetch, rather than
// refused until then; a key that fetch does not bring either is refused,
// and the next request naming it is refused at once, without waiting for
// or making another fetch. Spec: server-server-api, "Retrieving server
// keys".
func TestKeyRotatedRightAfterFetch(t *testing.T) {
	// Serial: asserts a request is answered within 2 s.
	forEachEngine(t, func(t *testing.T, n *network) {
		a := n.start()
		f := newFakeRemote(t, n)
		uri := "/_matrix/federation/v1/event/$nope" // 404 once the request is authenticated
		const keyPath = "/_matrix/key/v2/server"
		if status, body := n.request(a, f.name, f.key, a.Name, http.MethodGet, uri, nil); status != http.StatusNotFound {
			t.Fatalf("first request: %d %s", status, body)
		}
		rotated, err := signing.Generate()
		if err != nil {
			t.Fatal(err)
		}
		f.mu.Lock()
		f.key = rotated // served from now on
		f.mu.Unlock()
		before := f.count(keyPath)
		if status, body := n.request(a, f.name, rotated, a.Name, http.MethodGet, uri, nil); status != http.StatusNotFound {
			t.Fatalf("request signed with the key rotated right after A's fetch: %d %s, want it accepted (404 for the unknown event)", status, body)
		}
		if got := f.count(keyPath) - before; got != 1 {
			t.Errorf("the rotated key made A fetch %d times, want once", got)
		}

		madeUp, err := signing.Generate() // never served
		if err != nil {
			t.Fatal(err)
		}
		before = f.count(keyPath)
		if status, body := n.request(a, f.name, madeUp, a.Name, http.MethodGet, uri, nil); status != http.StatusUnauthorized {
			t.Fatalf("request signed with a key the server does not serve: %d %s, want 401", status, body)
		}
		if got := f.count(keyPath) - before; got != 1 {
			t.Errorf("the made-up key made A fetch %d times, want once", got)
		}
		before = f.count(keyPath)
		start := time.Now()
		if status, body := n.request(a, f.name, madeUp, a.Name, http.MethodGet, uri, nil); status != http.StatusUnauthorized {
			t.Fatalf("second request signed with it: %d %s, want 401", status, body)
		}
		if got, took := f.count(keyPath)-before, time.Since(start); got != 0 || took >= 2*time.Second {
			t.Errorf("the second request naming the missing key made %d fetches and took %v; want none, refused at once", got, took)
		}
	})
}

// TestKeyRotatedDuringFetch: a request signed with a key the server
// starts serving while A's fetch of its keys is under way (A read the
// document before the key existed) waits for the next fetch and is
// accepted, rather than taking that fetch's outcome and being refused;
// the request that started the fetch, naming a key never served, is
// refused. Two fetches in all, and the per-server fetch lock is
// forgotten once nobody holds it. Spec: server-server-api, "Retrieving
// server keys".
func TestKeyRotatedDuringFetch(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a := n.start()
		f := newFakeRemote(t, n)
		uri := "/_matrix/federation/v1/event/$nope" // 404 once the request is authenticated
		const keyPath = "/_matrix/key/v2/server"
		if status, body := n.request(a, f.name, f.key, a.Name, http.MethodGet, uri, nil); status != http.StatusNotFound {
			t.Fatalf("first request: %d %s", status, body)
		}
		a.HS.Federation.ForgetKeyFetches() // the next fetch is made at once
		madeUp, err := signing.Generate()  // never served
		if err != nil {
			t.Fatal(err)
		}
		rotated, err := signing.Generate()
		if err != nil {
			t.Fatal(err)
		}
		entered, release := make(chan struct{}), make(chan struct{})
		var once sync.Once
		f.mu.Lock()
		f.keyGate = func() { // only the first fetch waits, with the old key chosen
			once.Do(func() {
				close(entered)
				<-release
			})
		}
		f.mu.Unlock()
		before := f.count(keyPath)

		statusA, statusB := make(chan int, 1), make(chan int, 1)
		go func() {
			status, _ := n.request(a, f.name, madeUp, a.Name, http.MethodGet, uri, nil)
			statusA <- status
		}()
		select {
		case <-entered:
		case <-time.After(10 * time.Second):
			close(release)
			t.Fatal("the request signed with an unknown key made no fetch")
		}
		f.mu.Lock()
		f.key = rotated // served from the next fetch on
		f.mu.Unlock()
		go func() {
			status, _ := n.request(a, f.name, rotated, a.Name, http.MethodGet, uri, nil)
			statusB <- status
		}()
		for deadline := time.Now().Add(10 * time.Second); a.HS.Federation.KeyFetchCallers(f.name) < 2; {
			if time.Now().After(deadline) {
				close(release)
				t.Fatal("the request signed with the new key never waited for the fetch under way")
			}
			time.Sleep(5 * time.Millisecond)
		}
		close(release)
		if status := <-statusA; status != http.StatusUnauthorized {
			t.Errorf("request signed with a key never served: %d, want 401", status)
		}
		if status := <-statusB; status != http.StatusNotFound {
			t.Errorf("request signed with the key added during A's fetch: %d, want it accepted after the next fetch (404 for the unknown event)", status)
		}
		if got := f.count(keyPath) - before; got != 2 {
			t.Errorf("A fetched the keys %d times, want twice (the fetch under way, then the next)", got)
		}
		if got := a.HS.Federation.KeyFetchCallers(f.name); got != 0 {
			t.Errorf("%d callers still hold the fetch lock of %s, want it forgotten", got, f.name)
		}
	})
}

// TestKeyFetchOutlivesCaller: a request whose fetch of the origin's keys
// is under way when its client goes away does not end that fetch: a
// request that waited for it meanwhile takes its real outcome (here a
// document lacking its new key, so it waits for the next fetch and is
// accepted), not a failure the server did not cause. Otherwise anyone
// could name a server with a made-up key, hang up, and have the
// server's own requests that waited refused. Spec: server-server-api,
// "Retrieving server keys".
func TestKeyFetchOutlivesCaller(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a := n.start()
		f := newFakeRemote(t, n)
		uri := "/_matrix/federation/v1/event/$nope" // 404 once the request is authenticated
		if status, body := n.request(a, f.name, f.key, a.Name, http.MethodGet, uri, nil); status != http.StatusNotFound {
			t.Fatalf("first request: %d %s", status, body)
		}
		a.HS.Federation.ForgetKeyFetches()
		madeUp, err := signing.Generate()
		if err != nil {
			t.Fatal(err)
		}
		rotated, err := signing.Generate()
		if err != nil {
			t.Fatal(err)
		}
		entered, release := make(chan struct{}), make(chan struct{})
		var once sync.Once
		f.mu.Lock()
		f.keyGate = func() {
			once.Do(func() {
				close(entered)
				<-release
			})
		}
		f.mu.Unlock()
		defer func() {
			select {
			case <-release:
			default:
				close(release)
			}
		}()

		// The forged request, sent with a context the test cancels.
		fr := fclient.NewFederationRequest(http.MethodGet, spec.ServerName(f.name), spec.ServerName(a.Name), uri)
		if err := fr.Sign(spec.ServerName(f.name), gomatrixserverlib.KeyID(madeUp.ID), madeUp.PrivateKey); err != nil {
			t.Fatal(err)
		}
		req, err := fr.HTTPRequest()
		if err != nil {
			t.Fatal(err)
		}
		req.URL.Scheme, req.URL.Host = "https", a.Name
		ctx, hangUp := context.WithCancel(context.Background())
		forged := make(chan error, 1)
		go func() {
			resp, err := n.httpClient().Do(req.WithContext(ctx))
			if err == nil {
				resp.Body.Close()
			}
			forged <- err
		}()
		select {
		case <-entered:
		case <-time.After(10 * time.Second):
			t.Fatal("the forged request made no fetch")
		}
		f.mu.Lock()
		f.key = rotated
		f.mu.Unlock()
		statusB := make(chan int, 1)
		go func() {
			status, _ := n.request(a, f.name, rotated, a.Name, http.MethodGet, uri, nil)
			statusB <- status
		}()
		for deadline := time.Now().Add(10 * time.Second); a.HS.Federation.KeyFetchCallers(f.name) < 2; {
			if time.Now().After(deadline) {
				t.Fatal("the request signed with the new key never waited for the fetch under way")
			}
			time.Sleep(5 * time.Millisecond)
		}
		hangUp()
		<-forged
		time.Sleep(200 * time.Millisecond) // the server sees the client gone
		close(release)
		if status := <-statusB; status != http.StatusNotFound {
			t.Errorf("request signed with the new key, after the forged request's client hung up during the fetch it waited for: %d, want it accepted (404 for the unknown event)", status)
		}
	})
}

// TestKeyFloodOfMadeUpKeyIDs: requests signed with key IDs the server
// never served, each a new one, do not make a fetch per request: the
// first, right after a fetch, waits minRefetch (5 s) for the next one
// rather than fetching at once, and a burst of them, all waiting, shares
// that one fetch and is refused. Spec: server-server-api, "Retrieving
// server keys"; SECURITY-CASES (a forged request must not make us hammer
// the server it names).
func TestKeyFloodOfMadeUpKeyIDs(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a := n.start()
		f := newFakeRemote(t, n)
		uri := "/_matrix/federation/v1/event/$nope" // 404 once the request is authenticated
		const keyPath = "/_matrix/key/v2/server"
		if status, body := n.request(a, f.name, f.key, a.Name, http.MethodGet, uri, nil); status != http.StatusNotFound {
			t.Fatalf("first request: %d %s", status, body)
		}
		fetched := time.Now()
		before := f.count(keyPath)
		var wg sync.WaitGroup
		flood := func(count int) {
			for range count {
				wg.Add(1)
				go func() {
					defer wg.Done()
					madeUp, err := signing.Generate()
					if err != nil {
						t.Error(err)
						return
					}
					if status, body := n.request(a, f.name, madeUp, a.Name, http.MethodGet, uri, nil); status != http.StatusUnauthorized {
						t.Errorf("request signed with a made-up key: %d %s, want 401", status, body)
					}
				}()
			}
		}
		flood(1)
		time.Sleep(time.Second)
		if got := f.count(keyPath) - before; got != 0 && time.Since(fetched) < 4*time.Second {
			t.Errorf("a request signed with a made-up key right after a fetch made %d fetches at once, want it to wait for the next fetch", got)
		}
		flood(20)
		wg.Wait()
		if got := f.count(keyPath) - before; got != 1 {
			t.Errorf("21 requests signed with made-up keys, right after a fetch, made %d fetches in %v, want 1", got, time.Since(fetched))
		}
	})
}

// TestNotaryQueryNamesKeyAndMinimumValidity: a key fetched through a
// notary is asked for by its key ID with minimum_valid_until_ts set to
// the time the key must be valid at (now, for a request's signature), so
// that a notary holding an older copy refreshes it. Spec: rooms v5,
// "Signing key validity period" (servers MUST set
// minimum_valid_until_ts when using /query); server-server-api,
// "Querying Keys Through Another Server".
func TestNotaryQueryNamesKeyAndMinimumValidity(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		f := newFakeRemote(t, n)
		notary := newFakeRemote(t, n)
		var mu sync.Mutex
		var asked []json.RawMessage
		notary.mux.HandleFunc("/_matrix/key/v2/query", func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			mu.Lock()
			asked = append(asked, body)
			mu.Unlock()
			doc := mustJSON(map[string]any{"server_name": f.name, "valid_until_ts": time.Now().Add(time.Hour).UnixMilli(),
				"verify_keys": map[string]any{f.key.ID: map[string]string{"key": f.key.PublicBase64()}}})
			signed, err := gomatrixserverlib.SignJSON(f.name, gomatrixserverlib.KeyID(f.key.ID), f.key.PrivateKey, doc)
			if err == nil {
				signed, err = gomatrixserverlib.SignJSON(notary.name, gomatrixserverlib.KeyID(notary.key.ID), notary.key.PrivateKey, signed)
			}
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			_, _ = w.Write(mustJSON(map[string]any{"server_keys": []json.RawMessage{signed}}))
		})
		n.trustedNotary = []string{notary.name + " " + notary.key.ID + " " + notary.key.PublicBase64()}
		a := n.start()
		n.trustedNotary = nil
		f.mu.Lock()
		f.hideKeys = true
		f.mu.Unlock()

		sent := time.Now().UnixMilli()
		if status, body := n.request(a, f.name, f.key, a.Name, http.MethodGet, "/_matrix/federation/v1/event/$nope", nil); status != http.StatusNotFound {
			t.Fatalf("request signed with a key only the notary serves: %d %s, want it accepted (404 for the unknown event)", status, body)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(asked) != 1 {
			t.Fatalf("the notary was asked %d times, want once", len(asked))
		}
		var q struct {
			ServerKeys map[string]map[string]struct {
				MinimumValidUntilTS *int64 `json:"minimum_valid_until_ts"`
			} `json:"server_keys"`
		}
		if err := json.Unmarshal(asked[0], &q); err != nil {
			t.Fatal(err)
		}
		criteria, ok := q.ServerKeys[f.name][f.key.ID]
		if !ok || criteria.MinimumValidUntilTS == nil || *criteria.MinimumValidUntilTS < sent {
			t.Errorf("notary query %s: want %s's key %s asked for with minimum_valid_until_ts at least %d (the request's time)",
				asked[0], f.name, f.key.ID, sent)
		}
	})
}

// TestKeyFetchFailureSharedWithWaiters: a request that starts waiting
// while a fetch of the origin's keys is under way, and that fetch fails
// (the server unreachable), takes that failure at once instead of
// waiting for another fetch on top: one fetch for both. Spec:
// server-server-api, "Retrieving server keys"; SECURITY-CASES (no
// thundering herd on a server that is down).
func TestKeyFetchFailureSharedWithWaiters(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a := n.start()
		f := newFakeRemote(t, n)
		uri := "/_matrix/federation/v1/event/$nope"
		const keyPath = "/_matrix/key/v2/server"
		entered, release := make(chan struct{}), make(chan struct{})
		var once sync.Once
		f.mu.Lock()
		f.hideKeys = true // the gate holds the first 404
		f.keyGate = func() {
			once.Do(func() {
				close(entered)
				<-release
			})
		}
		f.mu.Unlock()
		before := f.count(keyPath)
		status := make(chan int, 2)
		send := func() {
			k, err := signing.Generate()
			if err != nil {
				t.Error(err)
				status <- 0
				return
			}
			s, _ := n.request(a, f.name, k, a.Name, http.MethodGet, uri, nil)
			status <- s
		}
		go send()
		select {
		case <-entered:
		case <-time.After(10 * time.Second):
			close(release)
			t.Fatal("the request made no fetch")
		}
		go send()
		for deadline := time.Now().Add(10 * time.Second); a.HS.Federation.KeyFetchCallers(f.name) < 2; {
			if time.Now().After(deadline) {
				close(release)
				t.Fatal("the second request never waited for the fetch under way")
			}
			time.Sleep(5 * time.Millisecond)
		}
		close(release)
		for range 2 {
			if s := <-status; s != http.StatusUnauthorized {
				t.Errorf("request signed with a key of an unreachable server: %d, want 401", s)
			}
		}
		if got := f.count(keyPath) - before; got != 1 {
			t.Errorf("the server's keys were fetched %d times, want once (the waiter takes the failure)", got)
		}
	})
}

// TestNotaryKeepsNewestDocument: a server's key document that this
// server serves as a notary is not replaced by an older one (valid until
// sooner) that a notary of its own answered with later, when the server
// itself could not be reached: the notary endpoint goes on serving the
// newer one. Spec: server-server-api, "Querying Keys Through Another
// Server" (notaries answer with cached responses).
func TestNotaryKeepsNewestDocument(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		f := newFakeRemote(t, n)
		f.mu.Lock()
		f.keyValidity = 3 * time.Hour
		f.mu.Unlock()
		notary := newFakeRemote(t, n)
		notary.mux.HandleFunc("/_matrix/key/v2/query", func(w http.ResponseWriter, r *http.Request) {
			doc := mustJSON(map[string]any{"server_name": f.name, "valid_until_ts": time.Now().Add(time.Hour).UnixMilli(),
				"verify_keys": map[string]any{f.key.ID: map[string]string{"key": f.key.PublicBase64()}}})
			signed, err := gomatrixserverlib.SignJSON(f.name, gomatrixserverlib.KeyID(f.key.ID), f.key.PrivateKey, doc)
			if err == nil {
				signed, err = gomatrixserverlib.SignJSON(notary.name, gomatrixserverlib.KeyID(notary.key.ID), notary.key.PrivateKey, signed)
			}
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			_, _ = w.Write(mustJSON(map[string]any{"server_keys": []json.RawMessage{signed}}))
		})
		n.trustedNotary = []string{notary.name + " " + notary.key.ID + " " + notary.key.PublicBase64()}
		a := n.start()
		n.trustedNotary = nil
		uri := "/_matrix/federation/v1/event/$nope"
		if status, body := n.request(a, f.name, f.key, a.Name, http.MethodGet, uri, nil); status != http.StatusNotFound {
			t.Fatalf("first request: %d %s", status, body)
		}
		validUntil := func() int64 {
			t.Helper()
			status, body := n.request(a, "", nil, a.Name, http.MethodGet, "/_matrix/key/v2/query/"+f.name, nil)
			var resp struct {
				ServerKeys []struct {
					ValidUntilTS int64 `json:"valid_until_ts"`
				} `json:"server_keys"`
			}
			if err := json.Unmarshal(body, &resp); status != http.StatusOK || err != nil || len(resp.ServerKeys) != 1 {
				t.Fatalf("A's notary answer for %s: %d %s (%v)", f.name, status, body, err)
			}
			return resp.ServerKeys[0].ValidUntilTS
		}
		newest := validUntil()
		if newest < time.Now().Add(2*time.Hour).UnixMilli() {
			t.Fatalf("A serves %s's document valid until %d, want the one fetched from it (3 h)", f.name, newest)
		}
		// f unreachable; a request signed with a key A lacks makes A fetch
		// again, from the notary, whose copy is valid for one hour.
		f.mu.Lock()
		f.hideKeys = true
		f.mu.Unlock()
		a.HS.Federation.ForgetKeyFetches()
		other, err := signing.Generate()
		if err != nil {
			t.Fatal(err)
		}
		if status, body := n.request(a, f.name, other, a.Name, http.MethodGet, uri, nil); status != http.StatusUnauthorized {
			t.Fatalf("request signed with a key neither f nor the notary serves: %d %s, want 401", status, body)
		}
		if got := validUntil(); got != newest {
			t.Errorf("after the notary's older copy, A serves %s's document valid until %d, want the newer one's %d", f.name, got, newest)
		}
	})
}

// TestOldKeyRefusedForRequests: a key the server lists in
// old_verify_keys is "only valid for signing events" (server-server-api,
// "Publishing Keys"), so a request signed with it is refused even while
// its expired_ts lies ahead, when the same server's current key is
// accepted; the key cache still holds it for events (TestKeyRotation,
// TestOldKeyValidBeforeExpiry).
func TestOldKeyRefusedForRequests(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a := n.start()
		f := newFakeRemote(t, n)
		old, err := signing.Generate()
		if err != nil {
			t.Fatal(err)
		}
		f.mu.Lock()
		f.oldKey, f.oldExpiredTS = old, time.Now().Add(time.Hour).UnixMilli()
		f.mu.Unlock()
		uri := "/_matrix/federation/v1/event/$nope" // 404 once the request is authenticated
		if status, body := n.request(a, f.name, f.key, a.Name, http.MethodGet, uri, nil); status != http.StatusNotFound {
			t.Fatalf("request signed with the current key: %d %s, want it accepted (404 for the unknown event)", status, body)
		}
		if status, body := n.request(a, f.name, old, a.Name, http.MethodGet, uri, nil); status != http.StatusUnauthorized {
			t.Fatalf("request signed with a key of old_verify_keys: %d %s, want 401", status, body)
		}
	})
}

// TestOlderKeyDocumentChangesNoKey: a key document older (valid until
// sooner) than the one a server's keys were taken from, answered later
// by a notary while the server cannot be reached, changes none of them:
// it neither shortens a current key's validity nor makes a key the
// newer document moved to old_verify_keys current again (so that a
// request signed with it would pass). Spec: server-server-api,
// "Retrieving server keys", "Querying Keys Through Another Server".
func TestOlderKeyDocumentChangesNoKey(t *testing.T) {
	forEachEngine(t, func(t *testing.T, n *network) {
		f := newFakeRemote(t, n)
		retired, err := signing.Generate()
		if err != nil {
			t.Fatal(err)
		}
		f.mu.Lock()
		f.keyValidity = 3 * time.Hour
		f.oldKey, f.oldExpiredTS = retired, time.Now().Add(time.Hour).UnixMilli()
		f.mu.Unlock()
		// The notary's copy is an older document of f's: valid for an
		// hour, from before it retired the key, both keys current.
		notary := newFakeRemote(t, n)
		notary.mux.HandleFunc("/_matrix/key/v2/query", func(w http.ResponseWriter, r *http.Request) {
			doc := mustJSON(map[string]any{"server_name": f.name, "valid_until_ts": time.Now().Add(time.Hour).UnixMilli(),
				"verify_keys": map[string]any{f.key.ID: map[string]string{"key": f.key.PublicBase64()},
					retired.ID: map[string]string{"key": retired.PublicBase64()}}})
			signed, err := gomatrixserverlib.SignJSON(f.name, gomatrixserverlib.KeyID(f.key.ID), f.key.PrivateKey, doc)
			if err == nil {
				signed, err = gomatrixserverlib.SignJSON(f.name, gomatrixserverlib.KeyID(retired.ID), retired.PrivateKey, signed)
			}
			if err == nil {
				signed, err = gomatrixserverlib.SignJSON(notary.name, gomatrixserverlib.KeyID(notary.key.ID), notary.key.PrivateKey, signed)
			}
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			_, _ = w.Write(mustJSON(map[string]any{"server_keys": []json.RawMessage{signed}}))
		})
		n.trustedNotary = []string{notary.name + " " + notary.key.ID + " " + notary.key.PublicBase64()}
		a := n.start()
		n.trustedNotary = nil
		uri := "/_matrix/federation/v1/event/$nope" // 404 once the request is authenticated
		if status, body := n.request(a, f.name, f.key, a.Name, http.MethodGet, uri, nil); status != http.StatusNotFound {
			t.Fatalf("request signed with f's current key: %d %s, want 404", status, body)
		}
		ctx := context.Background()
		before, _, ok, err := a.HS.Federation.CachedServerKey(ctx, f.name, f.key.ID)
		if err != nil || !ok || before < time.Now().Add(2*time.Hour).UnixMilli() {
			t.Fatalf("after the direct fetch, f's key cached valid until %d (cached %v, %v), want about 3 h ahead", before, ok, err)
		}
		// f unreachable; a request signed with a key A lacks makes A fetch
		// again, from the notary.
		f.mu.Lock()
		f.hideKeys = true
		f.mu.Unlock()
		a.HS.Federation.ForgetKeyFetches()
		other, err := signing.Generate()
		if err != nil {
			t.Fatal(err)
		}
		if status, body := n.request(a, f.name, other, a.Name, http.MethodGet, uri, nil); status != http.StatusUnauthorized {
			t.Fatalf("request signed with a key neither f nor the notary serves: %d %s, want 401", status, body)
		}
		if got, expired, ok, err := a.HS.Federation.CachedServerKey(ctx, f.name, f.key.ID); err != nil || !ok || got != before || expired != 0 {
			t.Errorf("after the notary's older document, f's key cached valid until %d (expired_ts %d, cached %v, %v), want %d as before",
				got, expired, ok, err, before)
		}
		if _, expired, ok, err := a.HS.Federation.CachedServerKey(ctx, f.name, retired.ID); err != nil || !ok || expired == 0 {
			t.Errorf("after the notary's older document, f's retired key cached with expired_ts %d (cached %v, %v), want it old still", expired, ok, err)
		}
		if status, body := n.request(a, f.name, retired, a.Name, http.MethodGet, uri, nil); status != http.StatusUnauthorized {
			t.Errorf("request signed with the key f retired, after the notary's older document listing it current: %d %s, want 401", status, body)
		}
	})
}

// TestKeyFetchGlobalBound: requests from many servers whose keys A
// lacks start at most the global bound of key fetches at once, however
// long those fetches hang; a request that finds no place in time is
// answered 401 M_UNAUTHORIZED, not left waiting; a server whose keys A
// holds is served all the while, and once the fetches end a server A
// never saw is served too. Spec: server-server-api, "Retrieving server
// keys", "Request Authentication" (401 M_UNAUTHORIZED); SECURITY-CASES:
// unauthenticated input must not start unbounded outbound work.
func TestKeyFetchGlobalBound(t *testing.T) {
	forEachEngine(t, func(t *testing.T, n *network) {
		const bound, flood = 2, 6
		a := n.start()
		a.HS.Federation.SetKeyFetchLimit(bound, 500*time.Millisecond)
		uri := "/_matrix/federation/v1/event/$nope" // 404 once the request is authenticated
		known := newFakeRemote(t, n)
		if status, body := n.request(a, known.name, known.key, a.Name, http.MethodGet, uri, nil); status != http.StatusNotFound {
			t.Fatalf("request from a server before the flood: %d %s, want 404", status, body)
		}

		var mu sync.Mutex
		inFlight, most := 0, 0
		release := make(chan struct{})
		var once sync.Once
		open := func() { once.Do(func() { close(release) }) }
		fakes := make([]*fakeRemote, flood)
		for i := range fakes {
			f := newFakeRemote(t, n)
			f.keyGate = func() { // each fetch of its keys hangs until release
				mu.Lock()
				inFlight++
				most = max(most, inFlight)
				mu.Unlock()
				<-release
				mu.Lock()
				inFlight--
				mu.Unlock()
			}
			fakes[i] = f
		}
		t.Cleanup(open) // before the fakes close: they wait for their handlers
		type answer struct {
			status int
			body   []byte
		}
		answers := make(chan answer, flood)
		for _, f := range fakes {
			go func() {
				status, body := n.request(a, f.name, f.key, a.Name, http.MethodGet, uri, nil)
				answers <- answer{status, body}
			}()
		}
		// All but bound of them find no place for their fetch: answered
		// 401 M_UNAUTHORIZED while the others still hang.
		deadline := time.After(10 * time.Second)
		for range flood - bound {
			select {
			case got := <-answers:
				var e struct {
					Errcode string `json:"errcode"`
				}
				if err := json.Unmarshal(got.body, &e); got.status != http.StatusUnauthorized || err != nil || e.Errcode != "M_UNAUTHORIZED" {
					t.Errorf("request whose key fetch found no place: %d %s, want 401 M_UNAUTHORIZED", got.status, got.body)
				}
			case <-deadline:
				mu.Lock()
				hanging, peak := inFlight, most
				mu.Unlock()
				t.Fatalf("10 s into a flood of %d requests with %d key fetches allowed at once, fewer than %d answered (%d fetches in flight, %d at most)",
					flood, bound, flood-bound, hanging, peak)
			}
		}
		mu.Lock()
		hanging, peak := inFlight, most
		mu.Unlock()
		if hanging != bound || peak != bound {
			t.Errorf("key fetches in flight during the flood: %d now, %d at most, want %d (the bound) both", hanging, peak, bound)
		}
		if status, body := n.request(a, known.name, known.key, a.Name, http.MethodGet, uri, nil); status != http.StatusNotFound {
			t.Errorf("request from a server whose keys A holds, during the flood: %d %s, want 404", status, body)
		}
		open()
		for range bound {
			select {
			case got := <-answers:
				if got.status != http.StatusNotFound {
					t.Errorf("request whose key fetch had a place, once the fetch ended: %d %s, want 404", got.status, got.body)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("requests whose key fetches had a place not answered 10 s after the fetches ended")
			}
		}
		newcomer := newFakeRemote(t, n)
		if status, body := n.request(a, newcomer.name, newcomer.key, a.Name, http.MethodGet, uri, nil); status != http.StatusNotFound {
			t.Errorf("request from a server A never saw, after the flood: %d %s, want 404", status, body)
		}
		mu.Lock()
		defer mu.Unlock()
		if most > bound {
			t.Errorf("%d key fetches in flight at once, want at most %d", most, bound)
		}
	})
}

// TestKeyDocumentValidityCappedForOrder: a document valid for a year
// does not hold back a server's later documents for that year: keys are
// valid no further than seven days ahead whatever valid_until_ts says,
// so a document fetched later, valid until after that horizon, replaces
// its keys (here shortening the year to eight days), and is the one A's
// notary endpoint serves. Spec: server-server-api, "Publishing Keys"
// (valid_until_ts: "the lesser of this field and 7 days into the
// future"), "Querying Keys Through Another Server".
func TestKeyDocumentValidityCappedForOrder(t *testing.T) {
	forEachEngine(t, func(t *testing.T, n *network) {
		a := n.start()
		f := newFakeRemote(t, n)
		f.mu.Lock()
		f.keyValidity = 365 * 24 * time.Hour
		f.mu.Unlock()
		uri := "/_matrix/federation/v1/event/$nope" // 404 once the request is authenticated
		if status, body := n.request(a, f.name, f.key, a.Name, http.MethodGet, uri, nil); status != http.StatusNotFound {
			t.Fatalf("request signed with f's key: %d %s, want 404", status, body)
		}
		// f's next document is valid for eight days; a request signed with
		// a key A lacks makes A fetch it.
		f.mu.Lock()
		f.keyValidity = 8 * 24 * time.Hour
		f.mu.Unlock()
		a.HS.Federation.ForgetKeyFetches()
		other, err := signing.Generate()
		if err != nil {
			t.Fatal(err)
		}
		if status, body := n.request(a, f.name, other, a.Name, http.MethodGet, uri, nil); status != http.StatusUnauthorized {
			t.Fatalf("request signed with a key f does not publish: %d %s, want 401", status, body)
		}
		got, _, ok, err := a.HS.Federation.CachedServerKey(context.Background(), f.name, f.key.ID)
		if want := time.Now().Add(9 * 24 * time.Hour).UnixMilli(); err != nil || !ok || got > want {
			t.Errorf("after f's document valid for eight days, its key cached valid until %d (cached %v, %v), want at most %d (not the year of the first)",
				got, ok, err, want)
		}
		// A's notary endpoint serves that document too, not the first.
		status, body := n.request(a, "", nil, a.Name, http.MethodGet, "/_matrix/key/v2/query/"+f.name, nil)
		var resp struct {
			ServerKeys []struct {
				ValidUntilTS int64 `json:"valid_until_ts"`
			} `json:"server_keys"`
		}
		if err := json.Unmarshal(body, &resp); status != http.StatusOK || err != nil || len(resp.ServerKeys) != 1 {
			t.Fatalf("A's notary answer for %s: %d %s (%v)", f.name, status, body, err)
		}
		if got, want := resp.ServerKeys[0].ValidUntilTS, time.Now().Add(9*24*time.Hour).UnixMilli(); got > want {
			t.Errorf("after f's document valid for eight days, A as a notary serves one valid until %d, want at most %d (not the year of the first)", got, want)
		}
	})
}
