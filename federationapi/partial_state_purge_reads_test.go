package federationapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
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
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b := n.start(), n.start()
		ctx := context.Background()
		alice, bob := a.register("alice"), b.register("bob")
		roomID := namedPublicRoom(t, alice)
		hold := make(chan struct{})
		b.HS.Federation.HoldResyncs(hold)
		var once sync.Once
		release := func() { once.Do(func() { close(hold) }) }
		t.Cleanup(release)
		if _, err := bob.cli.JoinRoom(ctx, string(roomID), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
			t.Fatalf("bob joining: %v", err)
		}
		sent, err := bob.cli.SendText(ctx, roomID, "said on partial state")
		if err != nil {
			t.Fatal(err)
		}
		msg := sent.EventID.String()
		if _, err := bob.cli.LeaveRoom(ctx, roomID); err != nil {
			t.Fatal(err)
		}
		leave, err := b.HS.Rooms.CurrentStateEvent(ctx, string(bob.id()), string(roomID), "m.room.member", string(bob.id()))
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, "A to get bob's leave", func() bool {
			m, _ := a.HS.Rooms.Membership(ctx, string(roomID), string(bob.id()))
			return m == "leave"
		})
		r := pathEscape(string(roomID))
		ts := strconv.FormatInt(time.Now().Add(time.Minute).UnixMilli(), 10)
		reads := []struct {
			name, method, uri string
			body              any
		}{
			{"event", http.MethodGet, "/_matrix/federation/v1/event/" + pathEscape(msg), nil},
			{"event_auth", http.MethodGet, "/_matrix/federation/v1/event_auth/" + r + "/" + pathEscape(leave.EventID), nil},
			{"backfill", http.MethodGet, "/_matrix/federation/v1/backfill/" + r + "?limit=20&v=" + pathEscape(leave.EventID), nil},
			{"get_missing_events", http.MethodPost, "/_matrix/federation/v1/get_missing_events/" + r,
				map[string]any{"earliest_events": []string{}, "latest_events": []string{leave.EventID}, "limit": 20}},
			{"timestamp_to_event", http.MethodGet, "/_matrix/federation/v1/timestamp_to_event/" + r + "?dir=b&ts=" + ts, nil},
		}
		ask := func(method, uri string, body any) fedAnswer {
			t.Helper()
			status, raw := n.request(b, a.Name, a.HS.Key, b.Name, method, uri, body)
			return readAnswer(t, status, raw)
		}
		stateReads := func(eventID string) map[string]fedAnswer {
			out := map[string]fedAnswer{}
			for _, kind := range []string{"state", "state_ids"} {
				out[kind] = ask(http.MethodGet, "/_matrix/federation/v1/"+kind+"/"+r+"?event_id="+pathEscape(eventID), nil)
			}
			return out
		}
		refused := func(when, eventID string) {
			t.Helper()
			for kind, got := range stateReads(eventID) {
				var e struct {
					Errcode string `json:"errcode"`
				}
				_ = json.Unmarshal([]byte(got.body), &e)
				if got.status != http.StatusForbidden || e.Errcode != "M_FORBIDDEN" {
					t.Errorf("%s: /%s at %s = %s, want 403 M_FORBIDDEN (B has only partial state there)",
						when, kind, eventID, got.short())
				}
			}
		}
		partialEvents := []string{msg, leave.EventID}
		before := map[string]fedAnswer{}
		for _, rd := range reads {
			before[rd.name] = ask(rd.method, rd.uri, rd.body)
			if before[rd.name].status != http.StatusOK {
				t.Fatalf("before the purge /%s = %s, want 200", rd.name, before[rd.name].short())
			}
		}
		for _, ev := range partialEvents {
			refused("before the purge", ev)
		}

		release()
		eventually(t, "B to purge the room's partial state", func() bool {
			partial, err := b.HS.Rooms.IsPartialState(ctx, string(roomID))
			return err == nil && !partial && !b.HS.Federation.ResyncRunning(string(roomID))
		})
		for _, ev := range partialEvents {
			refused("after the purge", ev)
		}
		for _, rd := range reads {
			if got := ask(rd.method, rd.uri, rd.body); got != before[rd.name] {
				t.Errorf("/%s after the purge = %s, before it %s", rd.name, got.short(), before[rd.name].short())
			}
		}
		// After a restart B still knows (the knowledge is stored).
		b.restart()
		for _, ev := range partialEvents {
			refused("after a restart", ev)
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
		for kind, got := range stateReads(join.EventID) {
			if got.status != http.StatusOK {
				t.Errorf("/%s at bob's new join (full state) = %s, want 200", kind, got.short())
			}
		}
		for _, ev := range partialEvents {
			refused("after the full rejoin", ev)
		}
	})
}
