package syncapi

import (
	"testing"

	"github.com/myelin-chat/myelin/roomserver"
)

// The memo's rules, one by one (membershipmemo.go): what it answers,
// and when it must not.
func TestMembershipMemoRules(t *testing.T) {
	bobs := []roomserver.MembershipEntry{{RoomID: "!a:x", Membership: "join", StreamPos: 7}}
	start := func() *membershipMemo {
		m := newMembershipMemo(10)
		m.start(10)
		return m
	}
	got := func(m *membershipMemo, user string, room int64) bool {
		_, ok := m.get(user, room)
		return ok
	}

	t.Run("answers within [asOf, done]", func(t *testing.T) {
		m := start()
		m.put(m.begin(), []string{"@bob:x", "@carol:x"}, map[string][]roomserver.MembershipEntry{"@bob:x": bobs})
		if ms, ok := m.get("@bob:x", 10); !ok || len(ms) != 1 || ms[0].RoomID != "!a:x" {
			t.Fatalf("bob at 10: %v %v", ms, ok)
		}
		if ms, ok := m.get("@carol:x", -1); !ok || len(ms) != 0 {
			t.Fatalf("carol (no memberships) at registration: %v %v", ms, ok)
		}
		if got(m, "@bob:x", 9) || got(m, "@bob:x", 11) {
			t.Fatal("answered for a room head outside [asOf 10, done 10]")
		}
		m.dispatched([]roomserver.StreamTouch{{StreamPos: 11, RoomID: "!a:x"}}, 12)
		if !got(m, "@bob:x", 12) {
			t.Fatal("a window without membership touches dropped bob")
		}
	})

	t.Run("a touch of the member drops it", func(t *testing.T) {
		m := start()
		m.put(m.begin(), []string{"@bob:x", "@carol:x"}, map[string][]roomserver.MembershipEntry{"@bob:x": bobs})
		// A current-state change without an event (a state reset) is a
		// touch like an event's (StreamTouched, roomserver_state_changes).
		m.dispatched([]roomserver.StreamTouch{{StreamPos: 11, RoomID: "!a:x", Member: "@bob:x", Accepted: true, State: true}}, 11)
		if got(m, "@bob:x", 11) || got(m, "@bob:x", -1) {
			t.Fatal("bob's entry survived a touch of his membership")
		}
		if !got(m, "@carol:x", 11) {
			t.Fatal("carol's entry went with bob's")
		}
	})

	t.Run("a read overlapping a touch is not kept", func(t *testing.T) {
		m := start()
		ticket := m.begin()
		// The waker dispatches bob's change while the read runs: the read
		// may have begun before it committed.
		m.dispatched([]roomserver.StreamTouch{{StreamPos: 11, RoomID: "!a:x", Member: "@bob:x", Accepted: true, State: true}}, 11)
		m.put(ticket, []string{"@bob:x"}, map[string][]roomserver.MembershipEntry{"@bob:x": bobs})
		if got(m, "@bob:x", 11) || got(m, "@bob:x", -1) {
			t.Fatal("a read that overlapped a dispatched membership touch was kept")
		}
	})

	t.Run("a skipped window drops all", func(t *testing.T) {
		m := start()
		m.put(m.begin(), []string{"@bob:x"}, map[string][]roomserver.MembershipEntry{"@bob:x": bobs})
		m.skipped(20)
		if got(m, "@bob:x", 20) || got(m, "@bob:x", -1) {
			t.Fatal("an entry survived a window the waker did not read")
		}
	})

	t.Run("nothing without a running waker", func(t *testing.T) {
		m := newMembershipMemo(10)
		m.put(m.begin(), []string{"@bob:x"}, map[string][]roomserver.MembershipEntry{"@bob:x": bobs})
		if got(m, "@bob:x", -1) {
			t.Fatal("kept before the waker started")
		}
		m = start()
		m.put(m.begin(), []string{"@bob:x"}, map[string][]roomserver.MembershipEntry{"@bob:x": bobs})
		m.stop()
		if got(m, "@bob:x", -1) {
			t.Fatal("answered after the waker stopped")
		}
	})

	t.Run("callers get their own copy", func(t *testing.T) {
		m := start()
		m.put(m.begin(), []string{"@bob:x"}, map[string][]roomserver.MembershipEntry{"@bob:x": bobs})
		ms, _ := m.get("@bob:x", 10)
		ms[0].Membership = "leave"
		if again, _ := m.get("@bob:x", 10); again[0].Membership != "join" {
			t.Fatal("a caller's change reached the memo")
		}
	})

	t.Run("bounded", func(t *testing.T) {
		m := newMembershipMemo(2)
		m.start(10)
		m.put(m.begin(), []string{"@a:x", "@b:x"}, nil)
		m.put(m.begin(), []string{"@c:x"}, nil)
		if len(m.byUser) > 2 {
			t.Fatalf("%d users kept, bound 2", len(m.byUser))
		}
	})
}
