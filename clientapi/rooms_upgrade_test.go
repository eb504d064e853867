package clientapi_test

import (
	"net/url"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/internal/testserver"
)

// TestRoomsUpgrade upgrades a v10 room to v12 with an additional
// creator: tombstone, predecessor, state copied, aliases moved, old room
// restricted. Spec: client-server-api, "Room Upgrades".
func TestRoomsUpgrade(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob, carol := newUser(t, srv, "alice"), newUser(t, srv, "bob"), newUser(t, srv, "carol")
		old, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: "10",
			Name: "Old", Topic: "topic", RoomAliasName: "up", Visibility: "public"})
		ok(t, "create v10", err)
		_, err = bob.JoinRoomByID(bg, old.RoomID)
		ok(t, "bob joins", err)
		oldPath := "/_matrix/client/v3/rooms/" + url.PathEscape(old.RoomID.String())

		runSteps(t, srv, []step{
			{name: "bob lacks power", method: "POST", path: oldPath + "/upgrade", token: bob.token, body: `{"new_version": "12"}`, wantStatus: 403, wantErrcode: "M_FORBIDDEN"},
			{name: "unknown version", method: "POST", path: oldPath + "/upgrade", token: alice.token, body: `{"new_version": "99"}`, wantStatus: 400, wantErrcode: "M_UNSUPPORTED_ROOM_VERSION"},
			{name: "no version", method: "POST", path: oldPath + "/upgrade", token: alice.token, body: `{}`, wantStatus: 400, wantErrcode: "M_MISSING_PARAM"},
		})
		status, body := callRaw(t, srv, "POST", oldPath+"/upgrade", alice.token, `{"new_version": "12", "additional_creators": ["@bob:localhost"]}`)
		newID, _ := body["replacement_room"].(string)
		if status != 200 || newID == "" {
			t.Fatalf("upgrade = %d %v", status, body)
		}
		newRoom := id.RoomID(newID)

		var tomb event.TombstoneEventContent
		ok(t, "tombstone", bob.StateEvent(bg, old.RoomID, event.StateTombstone, "", &tomb))
		if tomb.ReplacementRoom != newRoom {
			t.Fatalf("tombstone = %+v", tomb)
		}
		_, err = bob.SendText(bg, old.RoomID, "still here")
		wantErrcode(t, "old room is read-only for members", err, 403, "M_FORBIDDEN")

		_, err = bob.JoinRoomByID(bg, newRoom)
		ok(t, "bob follows", err)
		create, err := bob.FullStateEvent(bg, newRoom, event.StateCreate, "")
		ok(t, "new create event", err)
		cc := create.Content.Raw
		pred, _ := cc["predecessor"].(map[string]any)
		if cc["room_version"] != "12" || pred["room_id"] != old.RoomID.String() {
			t.Fatalf("new create content = %v", cc)
		}
		if ac, _ := cc["additional_creators"].([]any); len(ac) != 1 || ac[0] != bob.id.String() {
			t.Fatalf("additional_creators = %v", cc["additional_creators"])
		}
		var name event.RoomNameEventContent
		ok(t, "name copied", bob.StateEvent(bg, newRoom, event.StateRoomName, "", &name))
		if name.Name != "Old" {
			t.Fatalf("name = %q", name.Name)
		}
		resolved, err := carol.ResolveAlias(bg, "#up:localhost")
		ok(t, "resolve", err)
		if resolved.RoomID != newRoom {
			t.Fatalf("alias points at %s, want the new room", resolved.RoomID)
		}
		dir, err := carol.PublicRooms(bg, &mautrix.ReqPublicRooms{})
		ok(t, "directory", err)
		if len(dir.Chunk) != 1 || dir.Chunk[0].RoomID != newRoom {
			t.Fatalf("directory lists %+v", dir.Chunk)
		}
		// Bob is a creator of the new room: he may change power levels.
		_, err = bob.SendStateEvent(bg, newRoom, event.StatePowerLevels, "", map[string]any{
			"users": map[string]any{carol.id.String(): 50}, "state_default": 50, "events_default": 0})
		ok(t, "creator sets power levels", err)
	})
}

// TestRoomsReports: reporting events and rooms.
// Spec: client-server-api, "Reporting content".
func TestRoomsReports(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		room, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		ok(t, "create", err)
		msg, err := alice.SendText(bg, room.RoomID, "bad words")
		ok(t, "send", err)
		ok(t, "report event", alice.ReportEvent(bg, room.RoomID, msg.EventID, "spam"))
		err = bob.ReportEvent(bg, room.RoomID, msg.EventID, "spam")
		wantErrcode(t, "report from outside the room", err, 404, "M_NOT_FOUND")
		err = alice.ReportEvent(bg, room.RoomID, "$nope", "spam")
		wantErrcode(t, "report unknown event", err, 404, "M_NOT_FOUND")
		ok(t, "report room from outside", bob.ReportRoom(bg, room.RoomID, "abuse"))
		err = bob.ReportRoom(bg, "!nope:localhost", "abuse")
		wantErrcode(t, "report unknown room", err, 404, "M_NOT_FOUND")
		var n int
		if err := srv.HS.DB.Reader().QueryRow(bg, `SELECT COUNT(*) FROM room_reports WHERE room_id = $1`, room.RoomID.String()).Scan(&n); err != nil || n != 2 {
			t.Fatalf("%d reports stored (%v), want 2", n, err)
		}
	})
}
