package clientapi_test

import (
	"context"
	"net/url"
	"testing"

	"github.com/myelin-chat/myelin/internal/testserver"
)

// TestTxnIDScopeAcrossRefreshAndEndpoints: a transaction ID is scoped to
// the device and the endpoint. A send retried with a refreshed access
// token of the same device is a duplicate (the first event is returned);
// the same ID on PUT /redact (another endpoint) is a new request that
// redacts, and its retry returns that redaction.
// Spec: client-server-api, "Transaction identifiers".
func TestTxnIDScopeAcrossRefreshAndEndpoints(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		registerUser(t, srv, "txr")
		req := passwordLogin("txr")
		req.RefreshToken = true
		login, err := client(t, srv, "", "").Login(ctx, req)
		if err != nil || login.RefreshToken == "" {
			t.Fatalf("login with refresh_token: %+v %v", login, err)
		}
		token := login.AccessToken
		st, body := call(t, "POST", srv.URL+"/_matrix/client/v3/createRoom", token, map[string]any{"preset": "private_chat"})
		if st != 200 {
			t.Fatalf("createRoom: %d %v", st, body)
		}
		room := url.PathEscape(body["room_id"].(string))
		sendURL := srv.URL + "/_matrix/client/v3/rooms/" + room + "/send/m.room.message/t1"
		msg := map[string]any{"msgtype": "m.text", "body": "hello"}
		st, body = call(t, "PUT", sendURL, token, msg)
		if st != 200 {
			t.Fatalf("send: %d %v", st, body)
		}
		first := body["event_id"].(string)

		st, body = call(t, "POST", srv.URL+"/_matrix/client/v3/refresh", "", map[string]any{"refresh_token": login.RefreshToken})
		if st != 200 {
			t.Fatalf("refresh: %d %v", st, body)
		}
		token = body["access_token"].(string)
		st, body = call(t, "PUT", sendURL, token, msg)
		if st != 200 || body["event_id"] != first {
			t.Fatalf("send retried after a refresh: %d %v; want the first event %s", st, body, first)
		}

		redactURL := srv.URL + "/_matrix/client/v3/rooms/" + room + "/redact/" + url.PathEscape(first) + "/t1"
		st, body = call(t, "PUT", redactURL, token, map[string]any{"reason": "oops"})
		if st != 200 || body["event_id"] == first || body["event_id"] == nil {
			t.Fatalf("redact with the send's transaction ID: %d %v; want a new event, not the message %s", st, body, first)
		}
		redaction := body["event_id"]
		st, body = call(t, "PUT", redactURL, token, map[string]any{"reason": "oops"})
		if st != 200 || body["event_id"] != redaction {
			t.Fatalf("redact retried: %d %v; want the first redaction %v", st, body, redaction)
		}
		st, body = call(t, "GET", srv.URL+"/_matrix/client/v3/rooms/"+room+"/event/"+url.PathEscape(first), token, nil)
		if content, _ := body["content"].(map[string]any); st != 200 || len(content) != 0 {
			t.Fatalf("the message after the redaction: %d %v; want its content gone", st, body)
		}

		// A redaction through /send (content.redacts) and one through
		// /redact of the same event, with one transaction ID: two
		// endpoints, two requests, each retry answered with its own.
		st, body = call(t, "PUT", sendURL[:len(sendURL)-len("t1")]+"t2", token, map[string]any{"body": "again"})
		if st != 200 {
			t.Fatalf("send: %d %v", st, body)
		}
		target := body["event_id"].(string)
		sendRedactionURL := srv.URL + "/_matrix/client/v3/rooms/" + room + "/send/m.room.redaction/t3"
		redactURL = srv.URL + "/_matrix/client/v3/rooms/" + room + "/redact/" + url.PathEscape(target) + "/t3"
		st, body = call(t, "PUT", sendRedactionURL, token, map[string]any{"redacts": target})
		if st != 200 || body["event_id"] == nil {
			t.Fatalf("redaction through /send: %d %v", st, body)
		}
		viaSend := body["event_id"]
		st, body = call(t, "PUT", redactURL, token, map[string]any{})
		if st != 200 || body["event_id"] == nil || body["event_id"] == viaSend {
			t.Fatalf("redact with the transaction ID of a redaction sent through /send: %d %v; want a new event, not %v", st, body, viaSend)
		}
		viaRedact := body["event_id"]
		for u, want := range map[string]any{sendRedactionURL: viaSend, redactURL: viaRedact} {
			if st, body = call(t, "PUT", u, token, map[string]any{"redacts": target}); st != 200 || body["event_id"] != want {
				t.Errorf("PUT %s retried: %d %v; want its first event %v", u, st, body, want)
			}
		}
	})
}
