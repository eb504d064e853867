package roomserver

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// Spec: client-server-api, "Room History Visibility".
func TestHistoryVisibility(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s := newTestServer(t, db)
		ctx := context.Background()
		room := mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: "10", Preset: PresetPublicChat}).RoomID
		m1 := mustSend(t, s, room, alice, "m.room.message", nil, `{"body":"shared era"}`)
		hvJoined := mustSend(t, s, room, alice, "m.room.history_visibility", ptr(""), `{"history_visibility":"joined"}`)
		m2 := mustSend(t, s, room, alice, "m.room.message", nil, `{"body":"joined era, before bob"}`)
		if _, err := s.Join(ctx, MembershipRequest{RoomID: room, Sender: bob}); err != nil {
			t.Fatal(err)
		}
		m3 := mustSend(t, s, room, alice, "m.room.message", nil, `{"body":"bob is here"}`)
		mustSend(t, s, room, alice, "m.room.history_visibility", ptr(""), `{"history_visibility":"world_readable"}`)
		m4 := mustSend(t, s, room, alice, "m.room.message", nil, `{"body":"for the world"}`)
		mustSend(t, s, room, alice, "m.room.history_visibility", ptr(""), `{"history_visibility":"invited"}`)
		if _, err := s.Invite(ctx, MembershipRequest{RoomID: room, Sender: alice, Target: charlie}); err != nil {
			t.Fatal(err)
		}
		m5 := mustSend(t, s, room, alice, "m.room.message", nil, `{"body":"charlie is invited"}`)
		const dave = "@dave:test.local"

		cases := []struct {
			user, event string
			want        bool
		}{
			{bob, m1, true},        // shared, and bob joined later
			{bob, hvJoined, true},  // visible under the visibility before it
			{bob, m2, false},       // joined-only, bob not yet joined
			{bob, m3, true},        // bob joined
			{charlie, m1, false},   // shared, but charlie never joined
			{charlie, m2, false},   // joined-only
			{charlie, m4, true},    // world_readable
			{charlie, m5, true},    // invited, and charlie is invited
			{dave, m4, true},       // world_readable for anyone
			{dave, m5, false},      // invited, dave is not
			{dave, "$nope", false}, // unknown
		}
		for _, c := range cases {
			got, err := s.CanSee(ctx, c.user, c.event)
			if err != nil {
				t.Fatal(err)
			}
			if got != c.want {
				t.Errorf("CanSee(%s, %s) = %v, want %v", c.user, c.event, got, c.want)
			}
		}
		_, err := s.Event(ctx, bob, m2)
		wantCode(t, err, mxerr.NotFound)
		page, err := s.Messages(ctx, MessagesRequest{UserID: bob, RoomID: room, Dir: Forward, Limit: 100})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range page.Events {
			if e.EventID == m2 {
				t.Fatalf("Messages showed bob %s", m2)
			}
		}
		// A page where nothing is visible still moves on (security case 22).
		page, err = s.Messages(ctx, MessagesRequest{UserID: dave, RoomID: room, Dir: Forward, Limit: 3})
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Events) != 0 || page.End == page.Start {
			t.Fatalf("invisible page: %d events, start %s end %s", len(page.Events), page.Start, page.End)
		}
		rng, err := s.EventsInRange(ctx, RangeRequest{UserID: bob, RoomIDs: []string{room}, Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range rng.Events {
			if e.EventID == m2 {
				t.Fatalf("EventsInRange showed bob %s", m2)
			}
		}
		// State reads: a non-member of a non-world-readable room is refused.
		_, err = s.CurrentState(ctx, dave, room)
		wantCode(t, err, mxerr.Forbidden)
		_, err = s.StateAt(ctx, bob, m2)
		wantCode(t, err, mxerr.NotFound)
	})
}

// Spec: client-server-api, "Redactions"; security case 17.
func TestRedaction(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s := newTestServer(t, db)
		ctx := context.Background()
		for _, v := range []string{"10", "11", "12", "org.matrix.msc3757.10", "org.matrix.msc3757.11"} {
			t.Run("v"+v, func(t *testing.T) {
				resp := mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: v, Preset: PresetPublicChat})
				room, createID := resp.RoomID, resp.EventIDs[0]
				if _, err := s.Join(ctx, MembershipRequest{RoomID: room, Sender: bob}); err != nil {
					t.Fatal(err)
				}
				redact := func(sender, target string) string {
					r, err := s.SendEvent(ctx, SendEventRequest{RoomID: room, Sender: sender, Type: "m.room.redaction",
						Content: json.RawMessage(`{"reason":"spam"}`), Redacts: target})
					if err != nil {
						t.Fatalf("redaction by %s: %v", sender, err)
					}
					return r.EventID
				}
				content := func(id string) string {
					e, err := s.Event(ctx, alice, id)
					if err != nil {
						t.Fatal(err)
					}
					return string(e.Content)
				}
				m1 := mustSend(t, s, room, alice, "m.room.message", nil, `{"body":"oops"}`)
				r1 := redact(alice, m1)
				if got := content(m1); got != "{}" {
					t.Fatalf("redacted content = %s", got)
				}
				// Spec: rooms/v11, "Moving the redacts key": from v11 on
				// (and in MSC3757's version based on v11) the target is in
				// the content, before it at the top level.
				inContent := gjson.Get(content(r1), "redacts").Str == m1
				if wantInContent := strings.HasSuffix(v, "11") || v == "12"; inContent != wantInContent {
					t.Fatalf("redaction content %s: redacts in content %v, want %v", content(r1), inContent, wantInContent)
				}
				if e, _ := s.Event(ctx, alice, m1); e.RedactedBecause != r1 {
					t.Fatalf("redacted_because = %q, want %s", e.RedactedBecause, r1)
				}
				// bob has no redact power: his redaction of alice's message is
				// stored but has no effect.
				m2 := mustSend(t, s, room, alice, "m.room.message", nil, `{"body":"mine"}`)
				redact(bob, m2)
				if got := content(m2); got != `{"body":"mine"}` {
					t.Fatalf("bob redacted alice's message: %s", got)
				}
				// bob may redact his own message.
				m3 := mustSend(t, s, room, bob, "m.room.message", nil, `{"body":"bob's"}`)
				redact(bob, m3)
				if got := content(m3); got != "{}" {
					t.Fatalf("self-redaction not applied: %s", got)
				}
				// The create event is never redacted.
				redact(alice, createID)
				if got := content(createID); got == "{}" {
					t.Fatalf("create event was redacted")
				}
				// A redaction of an unknown event is kept and has no effect.
				redact(alice, "$unknown")
				// Redacted state stays in state, with redacted content.
				topic := mustSend(t, s, room, alice, "m.room.topic", ptr(""), `{"topic":"secret"}`)
				redact(alice, topic)
				if c := stateContent(t, s, alice, room, "m.room.topic", ""); len(c) != 0 {
					t.Fatalf("redacted topic content = %v", c)
				}
			})
		}
	})
}
