package federationapi_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/internal/signing"
)

// TestKeysThroughTrustedNotary: when a server no longer serves its keys
// itself, they are fetched from a notary of trusted_key_servers and
// checked against the key pinned for that notary; a notary answer signed
// with another key is not trusted; with no notary, nothing is.
// Spec: server-server-api, "Querying Keys Through Another Server".
func TestKeysThroughTrustedNotary(t *testing.T) {
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
	forEachEngine(t, func(t *testing.T, n *network) {
		a := n.start()
		f := newFakeRemote(t, n)
		const validity = 2 * time.Second
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
		// Past valid_until_ts and the keyring's minimum refetch interval (5 s).
		time.Sleep(validity + 5*time.Second)
		status, body := n.request(a, f.name, f.key, a.Name, http.MethodGet, uri, nil)
		if status != http.StatusUnauthorized {
			t.Errorf("request after the key expired, with the key no longer served: %d %s, want 401", status, body)
		}
		if got := f.count("/_matrix/key/v2/server"); got <= fetched {
			t.Errorf("the expired key was not fetched again")
		}
	})
}
