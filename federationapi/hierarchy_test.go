package federationapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// makeRoom creates a room for u with the given preset, room type ("" or
// m.space), name and extra initial state.
func makeRoom(t *testing.T, u *syncer, preset, roomType, name string, state ...*event.Event) id.RoomID {
	t.Helper()
	req := &mautrix.ReqCreateRoom{Preset: preset, Name: name, InitialState: state}
	if roomType != "" {
		req.CreationContent = map[string]any{"type": roomType}
	}
	created, err := u.cli.CreateRoom(context.Background(), req)
	if err != nil {
		t.Fatalf("createRoom %s: %v", name, err)
	}
	return created.RoomID
}

// addChild sends m.space.child space -> child with via.
func addChild(t *testing.T, u *syncer, space, child id.RoomID, suggested bool, via ...string) {
	t.Helper()
	content := map[string]any{"via": via}
	if suggested {
		content["suggested"] = true
	}
	if _, err := u.cli.SendStateEvent(context.Background(), space, event.StateSpaceChild, string(child), content); err != nil {
		t.Fatalf("m.space.child %s -> %s: %v", space, child, err)
	}
}

func hierarchyIDs(t *testing.T, u *syncer, root id.RoomID) []id.RoomID {
	t.Helper()
	resp, err := u.cli.Hierarchy(context.Background(), root, &mautrix.ReqHierarchy{})
	if err != nil {
		t.Fatalf("hierarchy of %s for %s: %v", root, u.id(), err)
	}
	var ids []id.RoomID
	for _, r := range resp.Rooms {
		ids = append(ids, r.RoomID)
	}
	return ids
}

func sameRooms(got []id.RoomID, want ...id.RoomID) bool {
	a, b := slices.Clone(got), slices.Clone(want)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// TestFederatedSpaceHierarchy: a space on A has children on B; A's client
// hierarchy describes them from B's federation hierarchy answers, with B
// deciding per server what A may see (restricted rooms once A has a
// member in the allowing room; never invite-only ones), and A filtering
// per user.
func TestFederatedSpaceHierarchy(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b := n.start(), n.start()
		ctx := context.Background()
		alice, carol, bob := a.register("alice"), a.register("carol"), b.register("bob")

		root := makeRoom(t, alice, "public_chat", "m.space", "root")
		r1 := makeRoom(t, alice, "public_chat", "", "r1")
		r2 := makeRoom(t, bob, "public_chat", "", "r2 on B")
		ss2 := makeRoom(t, bob, "public_chat", "m.space", "subspace on B")
		secret := makeRoom(t, bob, "private_chat", "", "secret")
		restricted := makeRoom(t, bob, "private_chat", "", "restricted", &event.Event{
			Type: event.StateJoinRules, StateKey: new(string),
			Content: event.Content{Raw: map[string]any{"join_rule": "restricted",
				"allow": []map[string]any{{"type": "m.room_membership", "room_id": root}}}}})
		addChild(t, alice, root, r1, false, a.Name)
		addChild(t, alice, root, r2, true, b.Name)
		addChild(t, alice, root, ss2, false, b.Name)
		addChild(t, bob, ss2, secret, false, b.Name)
		addChild(t, bob, ss2, restricted, false, b.Name)

		// B does not know A's users are in root yet: restricted is hidden.
		if got := hierarchyIDs(t, alice, root); !sameRooms(got, root, r1, r2, ss2) {
			t.Fatalf("alice's hierarchy before B knows root: %v", got)
		}
		status, body := n.request(b, a.Name, a.HS.Key, b.Name, http.MethodGet, "/_matrix/federation/v1/hierarchy/"+pathEscape(string(ss2)), nil)
		var answer struct {
			Room struct {
				RoomID        id.RoomID         `json:"room_id"`
				RoomType      string            `json:"room_type"`
				ChildrenState []json.RawMessage `json:"children_state"`
			} `json:"room"`
			Children []struct {
				RoomID         id.RoomID   `json:"room_id"`
				AllowedRoomIDs []id.RoomID `json:"allowed_room_ids"`
			} `json:"children"`
			Inaccessible []id.RoomID `json:"inaccessible_children"`
		}
		if status != http.StatusOK || json.Unmarshal(body, &answer) != nil {
			t.Fatalf("federation hierarchy of ss2: %d %s", status, body)
		}
		if answer.Room.RoomID != ss2 || answer.Room.RoomType != "m.space" || len(answer.Room.ChildrenState) != 2 ||
			len(answer.Children) != 0 || !sameRooms(answer.Inaccessible, secret, restricted) {
			t.Fatalf("federation hierarchy of ss2 before A is in root on B: %s", body)
		}

		// bob joins root through A: B now sees that A is in root.
		if _, err := bob.cli.JoinRoom(ctx, string(root), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
			t.Fatalf("bob joining root: %v", err)
		}
		status, body = n.request(b, a.Name, a.HS.Key, b.Name, http.MethodGet, "/_matrix/federation/v1/hierarchy/"+pathEscape(string(ss2)), nil)
		answer.Children, answer.Inaccessible = nil, nil
		if status != http.StatusOK || json.Unmarshal(body, &answer) != nil || len(answer.Children) != 1 ||
			answer.Children[0].RoomID != restricted || !slices.Equal(answer.Children[0].AllowedRoomIDs, []id.RoomID{root}) ||
			!slices.Equal(answer.Inaccessible, []id.RoomID{secret}) {
			t.Fatalf("federation hierarchy of ss2 once A is in root: %d %s", status, body)
		}
		// alice (in root) may see the restricted room; carol (not in root) may not.
		if got := hierarchyIDs(t, alice, root); !sameRooms(got, root, r1, r2, ss2, restricted) {
			t.Errorf("alice's hierarchy: %v", got)
		}
		if got := hierarchyIDs(t, carol, root); !sameRooms(got, root, r1, r2, ss2) {
			t.Errorf("carol's hierarchy: %v", got)
		}
		// suggested_only reaches B too.
		resp, err := alice.cli.Hierarchy(ctx, root, &mautrix.ReqHierarchy{SuggestedOnly: true})
		if err != nil || len(resp.Rooms) != 2 || resp.Rooms[1].RoomID != r2 || resp.Rooms[1].Name != "r2 on B" {
			t.Errorf("suggested-only hierarchy: %+v %v", resp, err)
		}

		// Unknown rooms and rooms origin may not see are 404; bad
		// parameters 400.
		for uri, want := range map[string]int{
			"/_matrix/federation/v1/hierarchy/" + pathEscape("!unknown:"+b.Name):                   http.StatusNotFound,
			"/_matrix/federation/v1/hierarchy/" + pathEscape(string(secret)):                       http.StatusNotFound,
			"/_matrix/federation/v1/hierarchy/" + pathEscape(string(r2)) + "?suggested_only=maybe": http.StatusBadRequest,
		} {
			if status, body := n.request(b, a.Name, a.HS.Key, b.Name, http.MethodGet, uri, nil); status != want {
				t.Errorf("%s: %d %s, want %d", uri, status, body, want)
			}
		}
		if status, _ := n.request(b, a.Name, nil, b.Name, http.MethodGet, "/_matrix/federation/v1/hierarchy/"+pathEscape(string(r2)), nil); status != http.StatusUnauthorized {
			t.Errorf("unsigned hierarchy request: %d", status)
		}

		// The room summary of a room A is not in comes from B's answer.
		var summary map[string]any
		url := alice.cli.BuildURLWithQuery(mautrix.ClientURLPath{"v1", "room_summary", string(r2)}, map[string]string{"via": b.Name})
		if _, err := alice.cli.MakeRequest(ctx, http.MethodGet, url, nil, &summary); err != nil ||
			summary["name"] != "r2 on B" || summary["join_rule"] != "public" || summary["room_version"] != "12" {
			t.Errorf("room summary of r2 via B: %v %v", summary, err)
		}
		url = alice.cli.BuildURLWithQuery(mautrix.ClientURLPath{"v1", "room_summary", string(secret)}, map[string]string{"via": b.Name})
		if _, err := alice.cli.MakeRequest(ctx, http.MethodGet, url, nil, &summary); !httpStatusIs(err, http.StatusNotFound) {
			t.Errorf("room summary of an invite-only room on B: %v", err)
		}
	})
}
