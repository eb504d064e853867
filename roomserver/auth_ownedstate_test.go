package roomserver

import (
	"context"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestOwnedStateLocal: MSC3757 rule 8 for local state events, in the
// owned-state versions and (unchanged rule) in their base versions.
func TestOwnedStateLocal(t *testing.T) {
	const suffix = "_state_key_suffix:!@#$123" // separator and sigil characters
	type send struct {
		name, sender, stateKey string
		want                   mxerr.Code // "" = sent
	}
	owned := []send{
		{"own suffixed key", bob, bob + suffix, ""},
		{"own key", bob, bob, ""},
		{"creator sets another's key", alice, bob, ""},
		{"creator sets another's suffixed key", alice, bob + suffix, ""},
		{"creator sets a non-member's key", alice, "@notinroom:hs2", ""},
		{"another's key", bob, charlie, mxerr.Forbidden},
		{"another's suffixed key", bob, charlie + suffix, mxerr.Forbidden},
		{"equal power", charlie, bob + suffix, mxerr.Forbidden},
		{"higher power's key", bob, alice + suffix, mxerr.Forbidden},
		{"unseparated suffix", bob, bob + suffix[1:], mxerr.Forbidden},
		{"misplaced user ID", bob, "@prefix_" + bob + suffix, mxerr.Forbidden},
		{"malformed user ID", alice, "@oops", mxerr.BadJSON},
		{"improperly suffixed", alice, alice + "@" + suffix[1:], mxerr.BadJSON},
		{"no @, no protection", bob, "x" + charlie, ""},
	}
	stable := []send{
		{"own key", bob, bob, ""},
		{"own suffixed key", bob, bob + suffix, mxerr.Forbidden},
		{"creator sets another's key", alice, bob, mxerr.Forbidden},
		{"creator sets another's suffixed key", alice, bob + suffix, mxerr.Forbidden},
		{"malformed user ID", alice, "@oops", mxerr.Forbidden},
	}
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newTestServer(t, db)
		for _, c := range []struct {
			version string
			sends   []send
		}{
			{"org.matrix.msc3757.10", owned}, {"org.matrix.msc3757.11", owned},
			{"10", stable}, {"11", stable},
		} {
			t.Run(c.version, func(t *testing.T) {
				room := mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: c.version, Preset: PresetPublicChat,
					PowerLevelContentOverride: map[string]any{"events": map[string]any{"com.example.test": 0}}}).RoomID
				if v, err := s.RoomVersion(ctx, room); err != nil || v != c.version {
					t.Fatalf("room version %q, %v", v, err)
				}
				for _, u := range []string{bob, charlie} {
					if _, err := s.Join(ctx, MembershipRequest{RoomID: room, Sender: u}); err != nil {
						t.Fatal(err)
					}
				}
				for _, sd := range c.sends {
					_, err := s.SendEvent(ctx, SendEventRequest{RoomID: room, Sender: sd.sender, Type: "com.example.test",
						StateKey: ptr(sd.stateKey), Content: []byte(`{}`)})
					if sd.want == "" && err != nil {
						t.Errorf("%s: %v", sd.name, err)
					}
					if sd.want != "" && !mxerr.Is(err, sd.want) {
						t.Errorf("%s: got %v, want %s", sd.name, err, sd.want)
					}
				}
			})
		}
	})
}

// TestOwnedStateFederation: the rule decides events from other servers
// too, against their auth events.
func TestOwnedStateFederation(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		for _, c := range []struct {
			version string
			want    map[string]InputOutcome
		}{
			{"org.matrix.msc3757.10", map[string]InputOutcome{"alice-sets-bobs": Accepted, "bob-sets-own": Accepted, "bob-sets-alices": Rejected, "bad-key": Rejected}},
			{"10", map[string]InputOutcome{"alice-sets-bobs": Rejected, "bob-sets-own": Rejected, "bob-sets-alices": Rejected, "bad-key": Rejected}},
		} {
			t.Run(c.version, func(t *testing.T) {
				d := baseRoom(t, c.version) // alice 100, bob 90, state_default 50
				d.add("alice-sets-bobs", alice, "com.example.test", ptr(bob+"_dev"), `{}`, "bob-join")
				d.add("bob-sets-own", bob, "com.example.test", ptr(bob+"_dev2"), `{}`, "bob-join")
				d.add("bob-sets-alices", bob, "com.example.test", ptr(alice+"_dev"), `{}`, "bob-join")
				d.add("bad-key", alice, "com.example.test", ptr("@oops_dev"), `{}`, "bob-join")
				s := newTestServer(t, storagetest.Open(t, db.Engine()))
				for _, name := range []string{"create", "alice-join", "pl0", "jr", "bob-join"} {
					if r := d.input(t, s, name); r.Outcome != Accepted {
						t.Fatalf("%s: %s %s", name, r.Outcome, r.Reason)
					}
				}
				for _, name := range []string{"alice-sets-bobs", "bob-sets-own", "bob-sets-alices", "bad-key"} {
					if r := d.input(t, s, name); r.Outcome != c.want[name] {
						t.Errorf("%s: %s (%s), want %s", name, r.Outcome, r.Reason, c.want[name])
					}
				}
			})
		}
	})
}

// TestOwnedStateVersionsUnstable: the owned-state versions are known to
// gomatrixserverlib as unstable, and cannot be the default.
func TestOwnedStateVersionsUnstable(t *testing.T) {
	for id := range ownedStateVersions {
		impl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(id))
		if err != nil || impl.Version() != gomatrixserverlib.RoomVersion(id) || impl.Stable() {
			t.Fatalf("%s: %v %v", id, impl, err)
		}
		_, err = New(context.Background(), Deps{DB: storagetest.Open(t, storage.SQLite), ServerName: testServer, Key: testKey(),
			Config: config.RoomServer{DefaultRoomVersion: id}})
		if err == nil {
			t.Fatalf("%s accepted as the default room version", id)
		}
	}
	for _, c := range []struct {
		stateKey, owner string
	}{
		{"@a:b", "@a:b"},
		{"@a:b_c", "@a:b"},
		{"@a:b_c_d:e", "@a:b"},
		{"@a:[::1]:8448_x", "@a:[::1]:8448"},
		{"@a_b:c_d", "@a_b:c"},
		{"@oops", ""},
		{"@a:b@c_d", ""},
		{"@:b", ""},
	} {
		got, err := leadingUserID(c.stateKey)
		if (err != nil) != (c.owner == "") || got != c.owner {
			t.Errorf("leadingUserID(%q) = %q, %v; want %q", c.stateKey, got, err, c.owner)
		}
	}
}
