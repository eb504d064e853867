package roomserver

import (
	"context"
	"encoding/json"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/tidwall/gjson"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// stallingSigner is a fakePolicySigner in front of which the first
// request for an event whose body contains stallOn waits until release
// is closed (or its context ends), and which, in "unreachable" mode,
// answers a connection failure and, in "timeout" mode, no answer until
// the request's deadline. It records the event IDs it was asked about.
type stallingSigner struct {
	*fakePolicySigner
	stallOn string
	stalled chan struct{} // closed when the stalled request arrives
	release chan struct{}

	mu      sync.Mutex
	used    bool     // guarded by mu: the stall happened
	mode    string   // guarded by mu: "", "unreachable" or "timeout"
	askedID []string // guarded by mu
}

func newStallingSigner(stallOn string) *stallingSigner {
	return &stallingSigner{fakePolicySigner: newFakePolicySigner(), stallOn: stallOn,
		stalled: make(chan struct{}), release: make(chan struct{})}
}

func (f *stallingSigner) setMode(mode string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mode, f.askedID = mode, nil
}

func (f *stallingSigner) asked() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.askedID)
}

func (f *stallingSigner) PolicySign(ctx context.Context, server string, event json.RawMessage) (map[string]map[string]string, error) {
	f.mu.Lock()
	f.askedID = append(f.askedID, eventIDOf(event))
	stall := f.stallOn != "" && !f.used && strings.Contains(gjson.GetBytes(event, "content.body").Str, f.stallOn)
	if stall {
		f.used = true
	}
	mode := f.mode
	f.mu.Unlock()
	switch mode {
	case "unreachable":
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	case "timeout":
		<-ctx.Done()
		return nil, ctx.Err()
	}
	if stall {
		close(f.stalled)
		select {
		case <-f.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return f.fakePolicySigner.PolicySign(ctx, server, event)
}

// eventIDOf is a room v12 event's ID, from its federation JSON.
func eventIDOf(event []byte) string {
	pdu, err := gomatrixserverlib.MustGetRoomVersion("12").NewEventFromUntrustedJSON(event)
	if err != nil {
		return "bad event: " + err.Error()
	}
	return pdu.EventID()
}

// policyRoom creates a room of alice's that uses ps's policy server.
func policyRoom(t *testing.T, s *Server, publicKey string) string {
	t.Helper()
	roomID := mustCreate(t, s, CreateRoomRequest{Creator: alice, Preset: "public_chat"}).RoomID
	if r := mustInput(t, s, remoteEvent(t, s, roomID, policyMod, "m.room.member", ptr(policyMod), `{"membership":"join"}`).JSON()); r.Outcome != Accepted {
		t.Fatalf("policy server's join: %s %s", r.Outcome, r.Reason)
	}
	mustSend(t, s, roomID, alice, "m.room.policy", ptr(""), `{"via":"`+policyServer+`","public_keys":{"ed25519":"`+publicKey+`"}}`)
	return roomID
}

func sendText(ctx context.Context, s *Server, roomID, body string) (*SendEventResponse, error) {
	return s.SendEvent(ctx, SendEventRequest{RoomID: roomID, Sender: alice, Type: "m.room.message",
		Content: json.RawMessage(`{"msgtype":"m.text","body":"` + body + `"}`)})
}

// TestPolicyServerNotAskedUnderLock: a send whose policy server does not
// answer does not hold up the room's other sends: while it waits, another
// send of the room is signed and stored. Answered, the stalled send finds
// the room moved on, builds its event again on the new extremity, asks
// again and is stored after the other send (the event first signed is
// never stored). A send whose room did not move while the policy server
// answered stores the event it asked about, asking once. A room that
// always moves is asked at most maxPolicyRounds times without the lock,
// then once more holding it.
func TestPolicyServerNotAskedUnderLock(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s := newTestServer(t, db)
		ps := newStallingSigner("slow")
		s.SetPolicySigner(ps)
		ctx := context.Background()
		roomID := policyRoom(t, s, ps.publicKey())

		type result struct {
			resp *SendEventResponse
			err  error
		}
		slow := make(chan result, 1)
		go func() {
			resp, err := sendText(ctx, s, roomID, "slow")
			slow <- result{resp, err}
		}()
		select {
		case <-ps.stalled:
		case <-time.After(30 * time.Second):
			t.Fatal("the slow send never reached the policy server")
		}
		fast := make(chan result, 1)
		go func() {
			resp, err := sendText(ctx, s, roomID, "fast")
			fast <- result{resp, err}
		}()
		var fastID string
		select {
		case r := <-fast:
			if r.err != nil {
				t.Fatalf("send while another waits for the policy server: %v", r.err)
			}
			fastID = r.resp.EventID
		case <-time.After(20 * time.Second):
			close(ps.release)
			t.Fatal("a send waited for another send's policy server request")
		}
		select {
		case r := <-slow:
			t.Fatalf("the stalled send ended before its policy server answered: %+v", r)
		default:
		}
		close(ps.release)
		r := <-slow
		if r.err != nil {
			t.Fatalf("the stalled send: %v", r.err)
		}
		slowID := r.resp.EventID
		e, _, err := s.FederationEvent(ctx, slowID)
		if err != nil {
			t.Fatal(err)
		}
		if prev := gjson.GetBytes(e.JSON, "prev_events").Array(); len(prev) != 1 || prev[0].Str != fastID {
			t.Fatalf("the stalled send's prev_events are %s, want [%s]", gjson.GetBytes(e.JSON, "prev_events").Raw, fastID)
		}
		if storedSignature(t, s, slowID) == "" || storedSignature(t, s, fastID) == "" {
			t.Fatal("a stored send lacks its policy signature")
		}
		asked := ps.asked()
		if len(asked) != 3 || asked[2] != slowID || asked[1] != fastID || asked[0] == slowID {
			t.Fatalf("the policy server was asked about %v; want [first slow event, %s, %s]", asked, fastID, slowID)
		}
		if _, _, err := s.FederationEvent(ctx, asked[0]); !mxerr.Is(err, mxerr.NotFound) {
			t.Fatalf("the event built on the old extremity: %v, want M_NOT_FOUND", err)
		}
		ext, err := s.Extremities(ctx, roomID)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(ext, []string{slowID}) {
			t.Fatalf("extremities %v, want [%s]", ext, slowID)
		}

		// Nothing moved: the event asked about is the one stored.
		ps.setMode("")
		resp, err := sendText(ctx, s, roomID, "alone")
		if err != nil {
			t.Fatal(err)
		}
		if got := ps.asked(); !slices.Equal(got, []string{resp.EventID}) {
			t.Fatalf("asked about %v, want [%s]", got, resp.EventID)
		}

		// The room moves every time the policy server answers: a
		// federation event arrives each time.
		var moves atomic.Int32
		s.afterPolicyAsk = func() {
			moves.Add(1)
			remote := remoteEvent(t, s, roomID, policyMod, "m.room.message", nil, `{"msgtype":"m.text","body":"move `+time.Now().String()+`"}`)
			if r := mustInput(t, s, withPolicySignature(t, remote, ps.key)); r.Outcome != Accepted {
				t.Errorf("moving the room: %s %s", r.Outcome, r.Reason)
			}
		}
		ps.setMode("")
		resp, err = sendText(ctx, s, roomID, "busy room")
		s.afterPolicyAsk = nil
		if err != nil {
			t.Fatal(err)
		}
		if got := ps.asked(); len(got) != maxPolicyRounds+1 || got[maxPolicyRounds] != resp.EventID {
			t.Fatalf("asked about %v, want %d events ending with %s", got, maxPolicyRounds+1, resp.EventID)
		}
		if moves.Load() != maxPolicyRounds {
			t.Fatalf("%d answers without the lock, want %d", moves.Load(), maxPolicyRounds)
		}
	})
}

// TestPolicyServerBackoff: a policy server that could not be reached (a
// connection failure, or no answer before the request's deadline) is not
// asked again until its backoff has run out, growing with each failure;
// meanwhile local sends fail at once with 502 M_UNKNOWN, a user's own
// leave goes out unsigned, and federation events are soft-failed, all
// without asking it. The first answer (even a refusal) resets it.
func TestPolicyServerBackoff(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s := newTestServer(t, db)
		var clock atomic.Int64
		clock.Store(time.Now().UnixNano())
		s.now = func() time.Time { return time.Unix(0, clock.Load()) }
		advance := func(d time.Duration) { clock.Add(int64(d)) }
		ps := newStallingSigner("")
		s.SetPolicySigner(ps)
		ctx := context.Background()
		roomID := policyRoom(t, s, ps.publicKey())
		if _, err := s.Join(ctx, MembershipRequest{RoomID: roomID, Sender: bob}); err != nil {
			t.Fatal(err)
		}

		failsFast := func(what string, wantAsked int) {
			t.Helper()
			_, err := sendText(ctx, s, roomID, what)
			if e, ok := mxerr.As(err); !ok || e.Code != mxerr.Unknown || e.Status() != 502 {
				t.Fatalf("%s: %v, want 502 M_UNKNOWN", what, err)
			}
			if got := len(ps.asked()); got != wantAsked {
				t.Fatalf("%s: asked %d times, want %d", what, got, wantAsked)
			}
		}
		ps.setMode("unreachable")
		failsFast("first failure", 1)
		failsFast("in backoff", 1)
		remote := remoteEvent(t, s, roomID, policyMod, "m.room.message", nil, `{"msgtype":"m.text","body":"unsigned"}`)
		if r := mustInput(t, s, remote.JSON()); r.Outcome != SoftFailed {
			t.Fatalf("federation event without a signature in backoff: %s, want soft-failed", r.Outcome)
		}
		left, err := s.Leave(ctx, MembershipRequest{RoomID: roomID, Sender: bob})
		if err != nil {
			t.Fatalf("leave in backoff: %v", err)
		}
		if storedSignature(t, s, left.EventID) != "" {
			t.Fatal("the leave has a policy signature")
		}
		if got := len(ps.asked()); got != 1 {
			t.Fatalf("asked %d times in backoff, want 1", got)
		}
		ps.setMode("") // back up, but not asked before the backoff ends
		failsFast("up but in backoff", 0)
		advance(policyBackoffMin)
		if _, err := sendText(ctx, s, roomID, "after the backoff"); err != nil {
			t.Fatalf("send after the backoff: %v", err)
		}
		if got := len(ps.asked()); got != 1 {
			t.Fatalf("asked %d times after the backoff, want 1", got)
		}

		// Growing: 5 s after the first failure, then 10 s after the second.
		s.policyTimeout = 50 * time.Millisecond
		ps.setMode("timeout")
		failsFast("timeout", 1)
		advance(policyBackoffMin)
		ps.setMode("unreachable")
		failsFast("second failure", 1)
		advance(policyBackoffMin)
		failsFast("longer backoff", 1) // still the one request of the second failure
		advance(policyBackoffMin)
		ps.setMode("")
		if _, err := sendText(ctx, s, roomID, "after the longer backoff"); err != nil {
			t.Fatalf("send after the longer backoff: %v", err)
		}

		// A refusal is an answer: it starts no backoff.
		ps.fakePolicySigner.set("refuse")
		for i := range 2 {
			if _, err := sendText(ctx, s, roomID, "refused"); !mxerr.Is(err, mxerr.Forbidden) {
				t.Fatalf("refusal %d: %v, want M_FORBIDDEN", i, err)
			}
		}
		if got := len(ps.fakePolicySigner.askedFor()); got != 2 {
			t.Fatalf("asked %d times for two refused sends, want 2", got)
		}
	})
}

// TestPolicyBackoffBound: the failure memory holds at most
// maxPolicyBackoffServers servers.
func TestPolicyBackoffBound(t *testing.T) {
	var b policyBackoff
	now := time.Now()
	down := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	for i := range maxPolicyBackoffServers + 10 {
		b.record("s"+strconv.Itoa(i), now, down, false)
	}
	if len(b.servers) > maxPolicyBackoffServers {
		t.Fatalf("%d servers remembered, at most %d", len(b.servers), maxPolicyBackoffServers)
	}
	b.record("last", now, down, false)
	if b.check("last", now) == nil {
		t.Fatal("the last failing server is not in backoff")
	}
	b.record("last", now, context.Canceled, true)
	if b.check("last", now) == nil {
		t.Fatal("a caller that went away reset the backoff")
	}
	b.record("last", now, nil, false)
	if b.check("last", now) != nil {
		t.Fatal("an answer did not reset the backoff")
	}
}
