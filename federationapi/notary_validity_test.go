package federationapi_test

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/internal/signing"
)

// TestNotaryMinimumValidUntil: POST /_matrix/key/v2/query answers from
// the notary's cache when the cached key document is valid until at
// least the asked minimum_valid_until_ts and holds the asked key IDs;
// otherwise it fetches the server's keys again (a document valid longer,
// or with a key the server rotated to). A server that cannot be reached
// any more is answered with the cached document all the same (the
// requester judges valid_until_ts), and one never seen with nothing.
// Spec: server-server-api, "Querying Keys Through Another Server"
// (POST /_matrix/key/v2/query: minimum_valid_until_ts; notaries serve
// cached responses for offline servers).
func TestNotaryMinimumValidUntil(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		notary := n.start()
		f := newFakeRemote(t, n)
		setKeys := func(validity time.Duration, hide bool, key *signing.Key) {
			f.mu.Lock()
			f.keyValidity, f.hideKeys = validity, hide
			if key != nil {
				f.key = key
			}
			f.mu.Unlock()
			notary.HS.Federation.ForgetKeyFetches() // only the cache rules are under test
		}
		type keyDoc struct {
			ValidUntilTS int64                      `json:"valid_until_ts"`
			VerifyKeys   map[string]json.RawMessage `json:"verify_keys"`
		}
		query := func(what string, criteria map[string]any) []keyDoc {
			t.Helper()
			status, body := n.request(notary, "", nil, notary.Name, http.MethodPost, "/_matrix/key/v2/query",
				map[string]any{"server_keys": map[string]any{f.name: criteria}})
			if status != http.StatusOK {
				t.Fatalf("%s: %d %s", what, status, body)
			}
			var resp struct {
				ServerKeys []json.RawMessage `json:"server_keys"`
			}
			if err := json.Unmarshal(body, &resp); err != nil {
				t.Fatalf("%s: %s: %v", what, body, err)
			}
			var out []keyDoc
			for _, raw := range resp.ServerKeys {
				if err := gomatrixserverlib.VerifyJSON(notary.Name, gomatrixserverlib.KeyID(notary.HS.Key.ID), notary.HS.Key.Public(), raw); err != nil {
					t.Fatalf("%s: a document is not countersigned by the notary: %v", what, err)
				}
				var d keyDoc
				if err := json.Unmarshal(raw, &d); err != nil {
					t.Fatal(err)
				}
				out = append(out, d)
			}
			return out
		}
		fetches := func() int { return f.count("/_matrix/key/v2/server") }
		ms := func(d time.Duration) int64 { return time.Now().Add(d).UnixMilli() }
		at := func(d time.Duration) map[string]any {
			return map[string]any{f.key.ID: map[string]any{"minimum_valid_until_ts": ms(d)}}
		}

		setKeys(time.Hour, false, nil)
		if docs := query("first query", map[string]any{}); len(docs) != 1 || fetches() != 1 {
			t.Fatalf("first query: %d documents, %d fetches; want 1 and 1", len(docs), fetches())
		}
		// Valid long enough: from the cache.
		setKeys(3*time.Hour, false, nil)
		if docs := query("minimum within the cached validity", at(30*time.Minute)); len(docs) != 1 || fetches() != 1 ||
			docs[0].ValidUntilTS > ms(time.Hour) {
			t.Fatalf("a minimum the cached document meets: %d documents, %d fetches; want the cached one, no fetch", len(docs), fetches())
		}
		// Asked valid past the cached document: fetched again.
		docs := query("minimum past the cached validity", at(2*time.Hour))
		if fetches() != 2 || len(docs) != 1 || docs[0].ValidUntilTS < ms(2*time.Hour) {
			t.Fatalf("a minimum past the cached validity: %d fetches, documents %+v; want a refetched document valid 3 h", fetches(), docs)
		}
		// The server is offline: its cached document all the same.
		setKeys(3*time.Hour, true, nil)
		docs = query("offline server", at(5*time.Hour))
		if fetches() != 3 {
			t.Fatalf("the notary did not try to refetch the keys (%d fetches)", fetches())
		}
		if len(docs) != 1 || docs[0].ValidUntilTS < ms(2*time.Hour) || docs[0].VerifyKeys[f.key.ID] == nil {
			t.Fatalf("an offline server's cached keys: %+v, want the cached document", docs)
		}
		// The server rotated its key: a query for the new key ID fetches.
		newKey, err := signing.Generate()
		if err != nil {
			t.Fatal(err)
		}
		oldID := f.key.ID
		for newKey.ID == oldID {
			if newKey, err = signing.Generate(); err != nil {
				t.Fatal(err)
			}
		}
		setKeys(4*time.Hour, false, newKey)
		docs = query("a key the cached document lacks", map[string]any{newKey.ID: map[string]any{}})
		if fetches() != 4 || len(docs) != 1 || docs[0].VerifyKeys[newKey.ID] == nil {
			t.Fatalf("a query for the rotated key: %d fetches, documents %+v; want the new document", fetches(), docs)
		}
		// A server never seen and unreachable: nothing.
		status, body := n.request(notary, "", nil, notary.Name, http.MethodPost, "/_matrix/key/v2/query",
			map[string]any{"server_keys": map[string]any{"localhost:1": map[string]any{}}})
		if status != http.StatusOK || string(body) != `{"server_keys":[]}` {
			t.Fatalf("an unknown, unreachable server: %d %s, want 200 with no documents", status, body)
		}
	})
}
