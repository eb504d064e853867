package federationapi_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// signedThenSent sends to s, from origin, a request whose X-Matrix
// signature covers signedURI and signedBody (nil: no content) while the
// request carries sentURI and sentBody (nil: no body): what a machine in
// the middle, or a buggy proxy, would make of a signed request.
func signedThenSent(t *testing.T, n *network, s, origin *fedServer, method, signedURI string, signedBody []byte,
	sentURI string, sentBody []byte) (int, []byte) {
	t.Helper()
	message := map[string]any{"method": method, "uri": signedURI, "origin": origin.Name, "destination": s.Name}
	if signedBody != nil {
		message["content"] = json.RawMessage(signedBody)
	}
	raw, err := json.Marshal(message)
	if err != nil {
		t.Fatal(err)
	}
	signed, err := gomatrixserverlib.SignJSON(origin.Name, gomatrixserverlib.KeyID(origin.HS.Key.ID), origin.HS.Key.PrivateKey, raw)
	if err != nil {
		t.Fatal(err)
	}
	var sigs struct {
		Signatures map[string]map[string]string `json:"signatures"`
	}
	if err := json.Unmarshal(signed, &sigs); err != nil {
		t.Fatal(err)
	}
	var body io.Reader = http.NoBody
	if sentBody != nil {
		body = bytes.NewReader(sentBody)
	}
	req, err := http.NewRequest(method, "https://"+s.Name+sentURI, body)
	if err != nil {
		t.Fatal(err)
	}
	if sentBody != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", fmt.Sprintf(`X-Matrix origin="%s",destination="%s",key="%s",sig="%s"`,
		origin.Name, s.Name, origin.HS.Key.ID, sigs.Signatures[origin.Name][origin.HS.Key.ID]))
	resp, err := n.httpClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, data
}

// TestXMatrixCoversBodyAndURI: the X-Matrix signature covers the
// request's content and URI, so a request changed after signing — a
// value of the body changed, the body dropped or added, the query
// changed — is refused with 401 M_UNAUTHORIZED and has no effect (a
// changed transaction's EDU is not applied). The same content
// re-serialised (other key order, whitespace) is the same JSON and is
// accepted: the signature is over canonical JSON, not bytes.
// Spec: server-server-api, "Request Authentication".
func TestXMatrixCoversBodyAndURI(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b := n.start(), n.start()
		alice := a.register("alice")
		if err := alice.cli.SetDisplayName(t.Context(), "Alice"); err != nil {
			t.Fatal(err)
		}
		ts := time.Now().UnixMilli()
		txn := func(id string, edus string) (string, []byte) {
			return "/_matrix/federation/v1/send/" + id,
				[]byte(fmt.Sprintf(`{"origin":%q,"origin_server_ts":%d,"pdus":[],"edus":[%s]}`, b.Name, ts, edus))
		}
		presence := func(user string) string {
			return fmt.Sprintf(`{"edu_type":"m.presence","content":{"push":[{"user_id":%q,"presence":"online","last_active_ago":1}]}}`, user)
		}
		profile := "/_matrix/federation/v1/query/profile?" + url.Values{"user_id": {alice.id().String()}, "field": {"displayname"}}.Encode()
		otherField := "/_matrix/federation/v1/query/profile?" + url.Values{"user_id": {alice.id().String()}, "field": {"avatar_url"}}.Encode()

		honestURI, honestBody := txn("honest", presence("@bobby:"+b.Name))
		changedURI, changedBody := txn("changed", "")
		_, changedSent := txn("changed", presence("@mallory:"+b.Name))
		droppedURI, droppedBody := txn("dropped", "")
		reorderedURI, reorderedBody := txn("reordered", "")
		reorderedSent := []byte(fmt.Sprintf("{ \"pdus\" : [ ],\n \"origin_server_ts\": %d, \"edus\":[], \"origin\": %q }", ts, b.Name))

		cases := []struct {
			name                string
			method              string
			signedURI, sentURI  string
			signedBody, sentBod []byte
			wantStatus          int
		}{
			{"honest transaction", http.MethodPut, honestURI, honestURI, honestBody, honestBody, http.StatusOK},
			{"content re-serialised", http.MethodPut, reorderedURI, reorderedURI, reorderedBody, reorderedSent, http.StatusOK},
			{"EDU added to the body", http.MethodPut, changedURI, changedURI, changedBody, changedSent, http.StatusUnauthorized},
			{"body dropped", http.MethodPut, droppedURI, droppedURI, droppedBody, nil, http.StatusUnauthorized},
			{"body added", http.MethodGet, profile, profile, nil, []byte(`{"field":"avatar_url"}`), http.StatusUnauthorized},
			{"query changed", http.MethodGet, profile, otherField, nil, nil, http.StatusUnauthorized},
			{"honest query", http.MethodGet, profile, profile, nil, nil, http.StatusOK},
		}
		for _, c := range cases {
			status, body := signedThenSent(t, n, a, b, c.method, c.signedURI, c.signedBody, c.sentURI, c.sentBod)
			if status != c.wantStatus {
				t.Errorf("%s: %d %s, want %d", c.name, status, body, c.wantStatus)
				continue
			}
			if c.wantStatus == http.StatusUnauthorized {
				var e struct {
					Errcode string `json:"errcode"`
				}
				if err := json.Unmarshal(body, &e); err != nil || e.Errcode != "M_UNAUTHORIZED" {
					t.Errorf("%s: body %s, want errcode M_UNAUTHORIZED", c.name, body)
				}
			}
		}
		// The honest transaction's EDU was applied, the one added after
		// signing was not.
		if p, err := alice.cli.GetPresence(t.Context(), id.UserID("@bobby:"+b.Name)); err != nil || p.Presence != event.PresenceOnline {
			t.Errorf("bobby's presence on A = %+v, %v; want online (the honest transaction's EDU)", p, err)
		}
		if p, err := alice.cli.GetPresence(t.Context(), id.UserID("@mallory:"+b.Name)); err == nil && p.Presence == event.PresenceOnline {
			t.Error("the EDU added after signing was applied: mallory is online on A")
		}
	})
}
