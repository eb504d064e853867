package roomserver

import (
	"context"
	"testing"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestPublicChatPresetEvents: public_chat sends create, join, power
// levels, join_rules and history_visibility, in that order, and no
// m.room.guest_access (absent means forbidden); private_chat sends
// guest_access can_join.
func TestPublicChatPresetEvents(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s := newTestServer(t, db)
		ctx := context.Background()
		pub := mustCreate(t, s, CreateRoomRequest{Creator: alice, Preset: PresetPublicChat})
		var types []string
		for _, id := range pub.EventIDs {
			ev, err := s.Event(ctx, alice, id)
			if err != nil {
				t.Fatal(err)
			}
			types = append(types, ev.Type)
		}
		want := []string{"m.room.create", "m.room.member", "m.room.power_levels", "m.room.join_rules", "m.room.history_visibility"}
		if len(types) != len(want) {
			t.Fatalf("public_chat events %v, want %v", types, want)
		}
		for i := range want {
			if types[i] != want[i] {
				t.Fatalf("public_chat events %v, want %v", types, want)
			}
		}
		if _, err := s.CurrentStateEvent(ctx, alice, pub.RoomID, "m.room.guest_access", ""); !mxerr.Is(err, mxerr.NotFound) {
			t.Fatalf("public_chat guest_access: %v, want none", err)
		}
		priv := mustCreate(t, s, CreateRoomRequest{Creator: alice, Preset: PresetPrivateChat})
		if got := stateContent(t, s, alice, priv.RoomID, "m.room.guest_access", "")["guest_access"]; got != "can_join" {
			t.Fatalf("private_chat guest_access = %v", got)
		}
	})
}
