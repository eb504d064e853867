package federationapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// fedAnswer is one federation read's status and body, the body's
// origin_server_ts (the time of the answer) left out.
type fedAnswer struct {
	status int
	body   string
}

func readAnswer(t *testing.T, status int, raw []byte) fedAnswer {
	t.Helper()
	var body map[string]any
	if err := json.Unmarshal(raw, &body); err != nil {
		t.Fatalf("answer %d is not a JSON object: %s", status, raw)
	}
	delete(body, "origin_server_ts")
	out, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	return fedAnswer{status, string(out)}
}

// short is a, its body cut, for error messages.
func (a fedAnswer) short() string {
	if len(a.body) > 160 {
		return strconv.Itoa(a.status) + " " + a.body[:160] + "…"
	}
	return strconv.Itoa(a.status) + " " + a.body
}

// TestPartialStateReadsAfterPurge: bob of B joins A's room with partial
// state and leaves while B's resync is held, so B purges the room's
// partial state (TestPartialStatePurgedAfterLastLocalLeave). B's events
// of the room still have the partial state they were stored with, so A's
// GET /state and /state_ids at them are refused (403 M_FORBIDDEN) after
// the purge as they were before it: B must never answer partial state as
// if it were the full state at an event. /event, /event_auth, /backfill,
// /get_missing_events and /timestamp_to_event answer the same before and
// after the purge (they do not read the state at the event). A later
// join of bob answered with the full state: /state_ids at his new join
// is served (the full state), at the events of the purged stretch still
// refused.
// Spec: server-server-api, "GET /_matrix/federation/v1/state/{roomId}";
// MSC3706 (a server with partial state cannot serve /state).
func TestPartialStateReadsAfterPurge(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b := n.start(), n.start()
		ctx := context.Background()
		p := leftWhilePartial(t, n, a, b, func(alice *syncer) id.RoomID { return namedPublicRoom(t, alice) })
		roomID, bob, r, msg := p.roomID, p.bob, p.r, p.msg
		ts := strconv.FormatInt(time.Now().Add(time.Minute).UnixMilli(), 10)
		reads := []struct {
			name, method, uri string
			body              any
		}{
			{"event", http.MethodGet, "/_matrix/federation/v1/event/" + pathEscape(msg), nil},
			{"event_auth", http.MethodGet, "/_matrix/federation/v1/event_auth/" + r + "/" + pathEscape(p.leave), nil},
			{"backfill", http.MethodGet, "/_matrix/federation/v1/backfill/" + r + "?limit=20&v=" + pathEscape(p.leave), nil},
			{"get_missing_events", http.MethodPost, "/_matrix/federation/v1/get_missing_events/" + r,
				map[string]any{"earliest_events": []string{}, "latest_events": []string{p.leave}, "limit": 20}},
			{"timestamp_to_event", http.MethodGet, "/_matrix/federation/v1/timestamp_to_event/" + r + "?dir=b&ts=" + ts, nil},
		}
		ask := func(method, uri string, body any) fedAnswer {
			t.Helper()
			status, raw := n.request(b, a.Name, a.HS.Key, b.Name, method, uri, body)
			return readAnswer(t, status, raw)
		}
		partialEvents := []string{msg, p.leave}
		before := map[string]fedAnswer{}
		for _, rd := range reads {
			before[rd.name] = ask(rd.method, rd.uri, rd.body)
			if before[rd.name].status != http.StatusOK {
				t.Fatalf("before the purge /%s = %s, want 200", rd.name, before[rd.name].short())
			}
		}
		for _, ev := range partialEvents {
			p.refused(t, ev+" before the purge", ev)
		}

		p.purge(t)
		for _, ev := range partialEvents {
			p.refused(t, ev+" after the purge", ev)
		}
		for _, rd := range reads {
			if got := ask(rd.method, rd.uri, rd.body); got != before[rd.name] {
				t.Errorf("/%s after the purge = %s, before it %s", rd.name, got.short(), before[rd.name].short())
			}
		}
		// After a restart B still knows (the knowledge is stored).
		b.restart()
		for _, ev := range partialEvents {
			p.refused(t, ev+" after a restart", ev)
		}

		// Bob joins again and this time B gets the full state (the resync
		// completes): the state at the new join is served, the stretch
		// the purge left stays refused.
		if _, err := bob.cli.JoinRoom(ctx, string(roomID), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
			t.Fatalf("bob joining again: %v", err)
		}
		waitCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := b.HS.Rooms.AwaitFullState(waitCtx, string(roomID)); err != nil {
			t.Fatalf("the resync after bob's new join: %v", err)
		}
		join, err := b.HS.Rooms.CurrentStateEvent(ctx, string(bob.id()), string(roomID), "m.room.member", string(bob.id()))
		if err != nil {
			t.Fatal(err)
		}
		for _, kind := range []string{"state", "state_ids"} {
			got := ask(http.MethodGet, "/_matrix/federation/v1/"+kind+"/"+r+"?event_id="+pathEscape(join.EventID), nil)
			if got.status != http.StatusOK {
				t.Errorf("/%s at bob's new join (full state) = %s, want 200", kind, got.short())
			}
		}
		for _, ev := range partialEvents {
			p.refused(t, ev+" after the full rejoin", ev)
		}
	})
}
