package federationapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"sync"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// Shared set-up of the tests of reads at a stretch of partial state
// (TestPartialStateReadsAfterPurge, TestPartialStateReadsAfterRejoin,
// TestStretchState*).

// partialStretch is a room of alice on A that bob of B joined with
// partial state while B's resync is held, talked in and left: msg and
// leave are stored on B with partial state.
type partialStretch struct {
	n           *network
	a, b        *fedServer
	alice, bob  *syncer
	roomID      id.RoomID
	r           string // roomID, escaped for a path
	msg, leave  string // bob's message and leave, of the stretch
	releaseHeld func() // lets B's held resync go (idempotent)
}

// leftWhilePartial builds a partialStretch in the room newRoom creates
// for alice (on a and b, started by the caller).
func leftWhilePartial(t *testing.T, n *network, a, b *fedServer, newRoom func(alice *syncer) id.RoomID) *partialStretch {
	t.Helper()
	ctx := context.Background()
	p := &partialStretch{n: n, a: a, b: b, alice: a.register("alice"), bob: b.register("bob")}
	p.roomID = newRoom(p.alice)
	p.r = pathEscape(string(p.roomID))
	hold := make(chan struct{})
	b.HS.Federation.HoldResyncs(hold)
	var once sync.Once
	p.releaseHeld = func() { once.Do(func() { close(hold) }) }
	t.Cleanup(p.releaseHeld)
	if _, err := p.bob.cli.JoinRoom(ctx, string(p.roomID), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("bob joining: %v", err)
	}
	p.msg = p.bob.send(p.roomID, "said on partial state").String()
	if _, err := p.bob.cli.LeaveRoom(ctx, p.roomID); err != nil {
		t.Fatal(err)
	}
	leave, err := b.HS.Rooms.CurrentStateEvent(ctx, string(p.bob.id()), string(p.roomID), "m.room.member", string(p.bob.id()))
	if err != nil {
		t.Fatal(err)
	}
	p.leave = leave.EventID
	eventually(t, "A to get bob's leave", func() bool {
		m, _ := a.HS.Rooms.Membership(ctx, string(p.roomID), string(p.bob.id()))
		return m == "leave"
	})
	return p
}

// unnamedPublicRoom is a public room without a name: alice is a hero,
// so B's partial state holds her membership and her events built on the
// stretch pass auth on B.
func unnamedPublicRoom(t *testing.T) func(*syncer) id.RoomID {
	return func(alice *syncer) id.RoomID {
		created, err := alice.cli.CreateRoom(context.Background(), &mautrix.ReqCreateRoom{Preset: "public_chat"})
		if err != nil {
			t.Fatal(err)
		}
		return created.RoomID
	}
}

// purge releases B's resync and waits for B to purge the room's partial
// state (bob left, so the resync stops).
func (p *partialStretch) purge(t *testing.T) {
	t.Helper()
	p.releaseHeld()
	eventually(t, "B to purge the room's partial state", func() bool {
		partial, err := p.b.HS.Rooms.IsPartialState(context.Background(), string(p.roomID))
		return err == nil && !partial && !p.b.HS.Federation.ResyncRunning(string(p.roomID))
	})
}

// stateIDs is dest's answer to GET /state_ids at eventID asked by
// origin, its ID lists sorted.
func (p *partialStretch) stateIDs(t *testing.T, dest, origin *fedServer, eventID string) (int, string) {
	t.Helper()
	status, raw := p.n.request(dest, origin.Name, origin.HS.Key, dest.Name, http.MethodGet,
		"/_matrix/federation/v1/state_ids/"+p.r+"?event_id="+pathEscape(eventID), nil)
	if status != http.StatusOK {
		return status, string(raw)
	}
	var body struct {
		PDUIDs       []string `json:"pdu_ids"`
		AuthChainIDs []string `json:"auth_chain_ids"`
	}
	if err := json.Unmarshal(raw, &body); err != nil {
		t.Fatalf("/state_ids at %s: %v", eventID, err)
	}
	slices.Sort(body.PDUIDs)
	slices.Sort(body.AuthChainIDs)
	return status, string(mustJSON(body))
}

// servedNow reports whether B answers A's /state_ids at eventID, and
// with the state A answers B at it.
func (p *partialStretch) servedNow(t *testing.T, eventID string) (ok bool, got, want string) {
	t.Helper()
	status, got := p.stateIDs(t, p.b, p.a, eventID)
	wantStatus, want := p.stateIDs(t, p.a, p.b, eventID)
	return status == http.StatusOK && wantStatus == http.StatusOK && got == want, got, want
}

// served checks that B serves A's /state_ids at eventID with the state A
// serves at it, and /state.
func (p *partialStretch) served(t *testing.T, what, eventID string) {
	t.Helper()
	if ok, got, want := p.servedNow(t, eventID); !ok {
		t.Errorf("/state_ids at %s: B answers %.300s; A answers %.300s; want both 200 and the same", what, got, want)
	}
	if status, raw := p.n.request(p.b, p.a.Name, p.a.HS.Key, p.b.Name, http.MethodGet,
		"/_matrix/federation/v1/state/"+p.r+"?event_id="+pathEscape(eventID), nil); status != http.StatusOK {
		t.Errorf("/state at %s: %d %.200s, want 200", what, status, raw)
	}
}

// refused checks that B refuses A's /state and /state_ids at eventID
// with 403 M_FORBIDDEN (B has only partial state there).
func (p *partialStretch) refused(t *testing.T, what, eventID string) {
	t.Helper()
	for _, kind := range []string{"state", "state_ids"} {
		status, raw := p.n.request(p.b, p.a.Name, p.a.HS.Key, p.b.Name, http.MethodGet,
			"/_matrix/federation/v1/"+kind+"/"+p.r+"?event_id="+pathEscape(eventID), nil)
		var e struct {
			Errcode string `json:"errcode"`
		}
		_ = json.Unmarshal(raw, &e)
		if status != http.StatusForbidden || e.Errcode != "M_FORBIDDEN" {
			t.Errorf("/%s at %s = %d %.200s, want 403 M_FORBIDDEN (B has only partial state there)", kind, what, status, raw)
		}
	}
}
