package federationapi_test

import (
	"context"
	"encoding/json"
	"slices"
	"testing"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// TestProfileChangeReachesRemoteRooms: bob on B is joined to alice's
// room on A; his displayname and avatar_url changes on B re-send his
// m.room.member event there, and A takes it into the room's state: alice
// reads his new profile from A.
// Spec: client-server-api, "Events on Change of Profile Information".
func TestProfileChangeReachesRemoteRooms(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		a, b := n.start(), n.start()
		alice, bob := a.register("alice"), b.register("bob")
		roomID := alice.publicAliasedRoom("profiles")
		if _, err := bob.cli.JoinRoom(ctx, "#profiles:"+a.Name, nil); err != nil {
			t.Fatalf("bob joining: %v", err)
		}
		profileOnA := func() (name, avatar string) {
			var c struct {
				DisplayName string `json:"displayname"`
				AvatarURL   string `json:"avatar_url"`
			}
			if err := alice.cli.StateEvent(ctx, roomID, event.StateMember, bob.id().String(), &c); err != nil {
				t.Fatalf("bob's member state on A: %v", err)
			}
			return c.DisplayName, c.AvatarURL
		}
		if err := bob.cli.SetDisplayName(ctx, "Robert"); err != nil {
			t.Fatal(err)
		}
		if err := bob.cli.SetAvatarURL(ctx, id.MustParseContentURI("mxc://"+b.Name+"/face")); err != nil {
			t.Fatal(err)
		}
		// The changes come as bob's own join events, one per change.
		bobMembers := func() (names []string) {
			for _, ev := range alice.timeline[roomID] {
				if ev.Type == event.StateMember && ev.StateKey != nil && *ev.StateKey == bob.id().String() {
					var c struct {
						Membership  string `json:"membership"`
						DisplayName string `json:"displayname"`
						AvatarURL   string `json:"avatar_url"`
					}
					_ = json.Unmarshal(ev.Content.VeryRaw, &c)
					if c.Membership != "join" || ev.Sender != bob.id() {
						t.Errorf("bob's member event %s: membership %q, sender %s", ev.ID, c.Membership, ev.Sender)
					}
					names = append(names, c.DisplayName+" "+c.AvatarURL)
				}
			}
			return names
		}
		face := "mxc://" + b.Name + "/face"
		alice.await("bob's avatar change on A", func() bool { return slices.Contains(bobMembers(), "Robert "+face) })
		if name, avatar := profileOnA(); name != "Robert" || avatar != face {
			t.Errorf("bob's member state on A: displayname %q, avatar_url %q", name, avatar)
		}
		names := bobMembers()
		if want := []string{" ", "Robert ", "Robert " + face}; !slices.Equal(names, want) {
			t.Errorf("bob's member events on A: %q, want %q (his join, then one per change)", names, want)
		}
	})
}
