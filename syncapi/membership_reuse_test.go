package syncapi_test

import (
	"context"
	"net/http"
	"net/url"
	"reflect"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/roomserver"
)

// TestLongPollSeesMembershipChangeAfterRegistering: a long poll reads its
// user's memberships to register with the waker and, when woken, reads
// them again (grouped with other requests': membershipsBatcher). A
// membership change after the registration — an invite to a new room,
// then the join — must reach the woken response, at once, not at the
// timeout: the guard for any reuse of the registration's read.
func TestLongPollSeesMembershipChangeAfterRegistering(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice := newUser(t, srv, "alice")
		bob := newUser(t, srv, "bob")
		home := createRoom(t, srv, bob, roomserver.CreateRoomRequest{Preset: "public_chat"})
		membership(t, srv, "join", alice, alice.id, home)
		other := createRoom(t, srv, bob, roomserver.CreateRoomRequest{Preset: "private_chat"})
		status, body := rawSync(t, srv, alice, "")
		if status != http.StatusOK {
			t.Fatalf("initial sync: %d %v", status, body)
		}
		since := body["next_batch"].(string)
		for _, step := range []struct {
			op      string
			section string
		}{{"invite", "invite"}, {"join", "join"}} {
			type answer struct {
				status int
				body   map[string]any
				took   time.Duration
			}
			done := make(chan answer, 1)
			start := time.Now()
			go func() {
				s, b := rawSync(t, srv, alice, "timeout=20000&since="+url.QueryEscape(since))
				done <- answer{s, b, time.Since(start)}
			}()
			for srv.HS.Sync.Waiting() < 1 {
				time.Sleep(time.Millisecond)
			}
			if step.op == "invite" {
				membership(t, srv, "invite", bob, alice.id, other)
			} else {
				membership(t, srv, "join", alice, alice.id, other)
			}
			a := <-done
			if a.status != http.StatusOK {
				t.Fatalf("%s: long poll: %d %v", step.op, a.status, a.body)
			}
			if dig(a.body, "rooms", step.section, other) == nil {
				t.Fatalf("%s: the woken long poll (after %v) has no %s of %s: %v", step.op, a.took, step.section, other, a.body["rooms"])
			}
			// The poll's timeout is 20 s: 10 s leaves a loaded machine
			// the membership change's round trip and still tells a wake
			// from the timeout.
			if a.took > 10*time.Second {
				t.Errorf("%s: answered after %v: at the timeout, not when woken", step.op, a.took)
			}
			since = a.body["next_batch"].(string)
		}
	})
}

// TestUserMembershipsOfUsers: the grouped memberships read answers each
// user as UserMemberships does alone — every membership kind, a
// forgotten room, a user in no room, a user asked twice — and nothing
// of one user under another.
func TestUserMembershipsOfUsers(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		alice := newUser(t, srv, "alice")
		bob := newUser(t, srv, "bob")
		carol := newUser(t, srv, "carol")
		nobody := newUser(t, srv, "nobody")
		joined := createRoom(t, srv, bob, roomserver.CreateRoomRequest{Preset: "public_chat"})
		membership(t, srv, "join", alice, alice.id, joined)
		invited := createRoom(t, srv, bob, roomserver.CreateRoomRequest{Preset: "private_chat"})
		membership(t, srv, "invite", bob, alice.id, invited)
		membership(t, srv, "invite", bob, carol.id, invited)
		left := createRoom(t, srv, carol, roomserver.CreateRoomRequest{Preset: "public_chat"})
		membership(t, srv, "join", alice, alice.id, left)
		membership(t, srv, "leave", alice, alice.id, left)
		if err := srv.HS.Rooms.Forget(ctx, alice.id, left); err != nil {
			t.Fatal(err)
		}
		banned := createRoom(t, srv, carol, roomserver.CreateRoomRequest{Preset: "public_chat"})
		membership(t, srv, "ban", carol, bob.id, banned)
		asked := []string{alice.id, bob.id, carol.id, nobody.id, alice.id}
		got, err := srv.HS.Rooms.UserMembershipsOfUsers(ctx, asked)
		if err != nil {
			t.Fatal(err)
		}
		forgotten := false
		for _, u := range asked {
			want, err := srv.HS.Rooms.UserMemberships(ctx, u)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got[u], want) {
				t.Errorf("%s: grouped %+v, alone %+v", u, got[u], want)
			}
			for _, m := range got[u] {
				forgotten = forgotten || m.Forgotten
			}
		}
		if len(got[alice.id]) != 3 || len(got[bob.id]) != 3 || len(got[carol.id]) != 3 || len(got[nobody.id]) != 0 || !forgotten {
			t.Errorf("the set-up is not what the test means: %+v", got)
		}
		if len(got) != 3 {
			t.Errorf("answers for %d users, want the 3 with memberships", len(got))
		}
	})
}
