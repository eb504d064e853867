package clientapi

import (
	"context"
	"testing"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// specFilterExample is the example of "POST /_matrix/client/v3/user/{userId}/filter".
const specFilterExample = `{
  "room": {
    "state": {"types": ["m.room.*"], "not_rooms": ["!726s6s6q:example.com"]},
    "timeline": {
      "limit": 10,
      "types": ["m.room.message"],
      "not_rooms": ["!726s6s6q:example.com"],
      "not_senders": ["@spam:example.com"]
    },
    "ephemeral": {
      "types": ["m.receipt", "m.typing"],
      "not_rooms": ["!726s6s6q:example.com"],
      "not_senders": ["@spam:example.com"]
    }
  },
  "presence": {"types": ["m.presence"], "not_senders": ["@alice:example.com"]},
  "event_format": "client",
  "event_fields": ["type", "content", "sender"]
}`

func TestParseFilter(t *testing.T) {
	tests := []struct {
		name    string
		filter  string
		wantErr mxerr.Code
	}{
		{"spec example", specFilterExample, ""},
		{"empty object", `{}`, ""},
		{"federation format", `{"event_format": "federation"}`, ""},
		{"lazy loading", `{"room": {"state": {"lazy_load_members": true, "include_redundant_members": true}}}`, ""},
		{"thread notifications and contains_url", `{"room": {"timeline": {"unread_thread_notifications": true, "contains_url": false}}}`, ""},
		{"account data filters", `{"account_data": {"limit": 5}, "room": {"account_data": {"types": ["m.tag"]}, "include_leave": true}}`, ""},
		{"unknown fields are kept", `{"org.example.future": {"x": 1}, "room": {"org.example.y": []}}`, ""},
		{"nulls are absent", `{"room": {"timeline": {"limit": null, "types": null}}, "event_format": null}`, ""},
		{"unknown event_format", `{"event_format": "raw"}`, mxerr.BadJSON},
		{"event_format not a string", `{"event_format": 1}`, mxerr.BadJSON},
		{"zero limit", `{"room": {"state": {"limit": 0}}}`, mxerr.BadJSON},
		{"negative timeline limit", `{"room": {"timeline": {"limit": -1}}}`, mxerr.BadJSON},
		{"negative limit", `{"presence": {"limit": -3}}`, mxerr.BadJSON},
		{"fractional limit", `{"room": {"timeline": {"limit": 10.5}}}`, mxerr.BadJSON},
		{"string limit", `{"room": {"timeline": {"limit": "10"}}}`, mxerr.BadJSON},
		{"room alias in rooms", `{"room": {"rooms": ["#alias:example.com"]}}`, mxerr.BadJSON},
		{"user in not_rooms", `{"room": {"state": {"not_rooms": ["@bob:example.com"]}}}`, mxerr.BadJSON},
		{"bare sender", `{"presence": {"senders": ["alice"]}}`, mxerr.BadJSON},
		{"bad not_senders", `{"room": {"ephemeral": {"not_senders": ["!room:x"]}}}`, mxerr.BadJSON},
		{"types not a list", `{"room": {"timeline": {"types": "m.room.message"}}}`, mxerr.BadJSON},
		{"number in types", `{"room": {"timeline": {"types": [1]}}}`, mxerr.BadJSON},
		{"lazy_load_members not boolean", `{"room": {"state": {"lazy_load_members": "yes"}}}`, mxerr.BadJSON},
		{"include_leave not boolean", `{"room": {"include_leave": 1}}`, mxerr.BadJSON},
		{"event_fields not a list", `{"event_fields": "type"}`, mxerr.BadJSON},
		{"room not an object", `{"room": []}`, mxerr.BadJSON},
		{"array", `[]`, mxerr.BadJSON},
		{"not JSON", `{"room": `, mxerr.NotJSON},
		{"empty", ``, mxerr.NotJSON},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseFilter([]byte(tt.filter))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("ParseFilter(%s) = %v", tt.filter, err)
				}
				return
			}
			if !mxerr.Is(err, tt.wantErr) {
				t.Fatalf("ParseFilter(%s) error = %v, want %s", tt.filter, err, tt.wantErr)
			}
		})
	}
}

func TestParseFilterFields(t *testing.T) {
	f, err := ParseFilter([]byte(specFilterExample))
	if err != nil {
		t.Fatal(err)
	}
	if f.Room == nil || f.Room.Timeline == nil || f.Room.Timeline.Limit == nil || *f.Room.Timeline.Limit != 10 {
		t.Fatalf("timeline limit not parsed: %+v", f.Room)
	}
	if got := f.Room.Timeline.NotSenders; len(got) != 1 || got[0] != "@spam:example.com" {
		t.Errorf("timeline.not_senders = %v", got)
	}
	if f.Room.State.Rooms != nil || f.Room.State.Types[0] != "m.room.*" {
		t.Errorf("state filter = %+v; rooms must be nil (absent)", f.Room.State)
	}
	if f.EventFormat != "client" || len(f.EventFields) != 3 || f.Presence.NotSenders[0] != "@alice:example.com" {
		t.Errorf("top level = %+v", f)
	}

	f, err = ParseFilter([]byte(`{"room": {"rooms": [], "timeline": {"lazy_load_members": true, "contains_url": false}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if f.Room.Rooms == nil || len(f.Room.Rooms) != 0 {
		t.Errorf("rooms: [] must parse as an empty, non-nil list (no rooms), got %#v", f.Room.Rooms)
	}
	if !f.Room.Timeline.LazyLoadMembers || f.Room.Timeline.ContainsURL == nil || *f.Room.Timeline.ContainsURL {
		t.Errorf("timeline = %+v", f.Room.Timeline)
	}
}

func TestFilterStore(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newUserDataServer(t, db, nil)
		InsertTestUser(t, db, "alice", false)
		InsertTestUser(t, db, "bob", false)

		lazy := []byte(`{"room":{"state":{"lazy_load_members":true}}}`)
		id1, err := s.storeFilter(ctx, "alice", lazy)
		if err != nil {
			t.Fatal(err)
		}
		if id1 == "" || id1[0] == '{' {
			t.Fatalf("filter ID %q", id1)
		}
		again, err := s.storeFilter(ctx, "alice", lazy)
		if err != nil || again != id1 {
			t.Errorf("the same filter stored twice got IDs %q and %q (%v)", id1, again, err)
		}
		other, err := s.storeFilter(ctx, "alice", []byte(`{"room":{"timeline":{"limit":20}}}`))
		if err != nil || other == id1 {
			t.Errorf("a different filter got ID %q (first %q, %v)", other, id1, err)
		}
		bobs, err := s.storeFilter(ctx, "bob", lazy)
		if err != nil || bobs == id1 {
			t.Errorf("bob's copy of alice's filter got ID %q (alice's %q, %v)", bobs, id1, err)
		}

		f, err := s.Filter(ctx, "@alice:test", id1)
		if err != nil {
			t.Fatal(err)
		}
		if f.Room == nil || f.Room.State == nil || !f.Room.State.LazyLoadMembers {
			t.Errorf("Filter(%s) = %+v", id1, f)
		}
		for _, id := range []string{bobs, "999999", "abc", "0" + id1, "-1", `{"room":{}}`, ""} {
			if _, err := s.Filter(ctx, "@alice:test", id); !mxerr.Is(err, mxerr.NotFound) {
				t.Errorf("Filter(alice, %q) error = %v, want M_NOT_FOUND", id, err)
			}
		}
		if _, err := s.Filter(ctx, "@alice:elsewhere", id1); !mxerr.Is(err, mxerr.NotFound) {
			t.Errorf("Filter of a remote user = %v, want M_NOT_FOUND", err)
		}
	})
}
