package clientapi

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

func TestAccountDataContent(t *testing.T) {
	tests := []struct {
		body    string
		want    string
		wantErr mxerr.Code
	}{
		{body: `{}`, want: `{}`},
		{body: ` { "ignored_users" : { "@bob:example.org" : {} } } `, want: `{"ignored_users":{"@bob:example.org":{}}}`},
		{body: `[]`, wantErr: mxerr.BadJSON},
		{body: `"m.direct"`, wantErr: mxerr.BadJSON},
		{body: `42`, wantErr: mxerr.BadJSON},
		{body: `null`, wantErr: mxerr.BadJSON},
		{body: ``, wantErr: mxerr.NotJSON},
		{body: " \n\t ", wantErr: mxerr.NotJSON},
		{body: ` [1] `, wantErr: mxerr.BadJSON},
		{body: `{"a": }`, wantErr: mxerr.NotJSON},
		{body: `{}{}`, wantErr: mxerr.NotJSON},
		{body: `not json`, wantErr: mxerr.NotJSON},
	}
	for _, tt := range tests {
		got, err := accountDataContent([]byte(tt.body))
		if tt.wantErr != "" {
			if !mxerr.Is(err, tt.wantErr) {
				t.Errorf("accountDataContent(%q) error = %v, want %s", tt.body, err, tt.wantErr)
			}
			continue
		}
		if err != nil || string(got) != tt.want {
			t.Errorf("accountDataContent(%q) = %s, %v; want %s", tt.body, got, err, tt.want)
		}
	}
}

func TestValidRoomID(t *testing.T) {
	tests := []struct {
		id   string
		want bool
	}{
		{"!726s6s6q:example.com", true},
		{"!abc:localhost:8448", true},
		{"!31hneApxJ_1o-63DmFrpeqnkFfWppnzWso1JvH3ogLM", true}, // room version 12: no domain
		{"!", false},
		{"", false},
		{"#alias:example.com", false},
		{"@notaroomid:example.org", false},
		{"!:example.com", false},
		{"!abc:", false},
		{"!a\x00b:example.com", false},
		{"!\xff:example.com", false},
		{"!" + strings.Repeat("a", 254), true},
		{"!" + strings.Repeat("a", 255), false},
	}
	for _, tt := range tests {
		if got := validRoomID(tt.id); got != tt.want {
			t.Errorf("validRoomID(%q) = %v, want %v", tt.id, got, tt.want)
		}
	}
}

// notifications records Deps.Notify calls.
type notifications struct {
	mu    sync.Mutex
	calls []string
}

func (n *notifications) notify(stream string, pos int64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.calls = append(n.calls, fmt.Sprintf("%s:%d", stream, pos))
}

func (n *notifications) list() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.calls...)
}

func TestAccountDataStream(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		var notes notifications
		s := newUserDataServer(t, db, notes.notify)
		InsertTestUser(t, db, "alice", false)
		InsertTestUser(t, db, "bob", false)

		entries, latest, err := s.AccountDataSince(ctx, "@alice:test", 0)
		if err != nil || len(entries) != 0 || latest != 0 {
			t.Fatalf("empty stream: %v, %d, %v", entries, latest, err)
		}

		put := func(local, roomID, dataType, content string) int64 {
			t.Helper()
			pos, err := s.storeAccountData(ctx, local, roomID, dataType, json.RawMessage(content))
			if err != nil {
				t.Fatalf("storeAccountData(%s, %q, %s): %v", local, roomID, dataType, err)
			}
			return pos
		}
		p1 := put("alice", "", "m.direct", `{"@bob:test":["!dm:test"]}`)
		p2 := put("alice", "!room:test", "m.tag", `{"tags":{"m.favourite":{}}}`)
		p3 := put("bob", "", "m.direct", `{}`)
		if !(p1 < p2 && p2 < p3) {
			t.Fatalf("positions not increasing: %d %d %d", p1, p2, p3)
		}
		if got, want := notes.list(), []string{
			fmt.Sprintf("account_data:%d", p1), fmt.Sprintf("account_data:%d", p2), fmt.Sprintf("account_data:%d", p3),
		}; strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("notifications = %v, want %v", got, want)
		}

		entries, latest, err = s.AccountDataSince(ctx, "@alice:test", 0)
		if err != nil {
			t.Fatal(err)
		}
		if latest != p3 {
			t.Errorf("latest = %d, want the stream head %d (bob's write counts)", latest, p3)
		}
		if len(entries) != 2 ||
			entries[0].RoomID != "" || entries[0].Type != "m.direct" || entries[0].Position != p1 ||
			string(entries[0].Content) != `{"@bob:test":["!dm:test"]}` ||
			entries[1].RoomID != "!room:test" || entries[1].Type != "m.tag" || entries[1].Position != p2 {
			t.Fatalf("alice's entries = %+v", entries)
		}

		// Rewriting m.direct moves it to a new position: a reader that has
		// seen up to p3 sees exactly that change, once.
		p4 := put("alice", "", "m.direct", `{"@carol:test":[]}`)
		entries, latest, err = s.AccountDataSince(ctx, "@alice:test", p3)
		if err != nil {
			t.Fatal(err)
		}
		if latest != p4 || len(entries) != 1 || entries[0].Position != p4 || string(entries[0].Content) != `{"@carol:test":[]}` {
			t.Fatalf("since %d: %+v, latest %d; want the rewritten m.direct at %d", p3, entries, latest, p4)
		}
		entries, _, err = s.AccountDataSince(ctx, "@alice:test", 0)
		if err != nil || len(entries) != 2 || entries[0].Type != "m.tag" || entries[1].Type != "m.direct" {
			t.Fatalf("full read after rewrite = %+v, %v; want m.tag then m.direct, no duplicate", entries, err)
		}
		if got, err := s.loadAccountData(ctx, "alice", "", "m.direct"); err != nil || string(got) != `{"@carol:test":[]}` {
			t.Errorf("loadAccountData = %s, %v", got, err)
		}
		if got, err := s.loadAccountData(ctx, "alice", "!room:test", "m.direct"); err != nil || got != nil {
			t.Errorf("room account data must not fall back to global: %s, %v", got, err)
		}
		if _, _, err := s.AccountDataSince(ctx, "@alice:elsewhere", 0); !mxerr.Is(err, mxerr.NotFound) {
			t.Errorf("AccountDataSince of a remote user = %v, want M_NOT_FOUND", err)
		}
	})
}

// TestAccountDataConcurrentWrites checks that concurrent writers get
// distinct positions and that a reader that stored latest never misses a
// write: every write lands either at or below a reader's latest and is
// returned then, or above it and is returned next time.
func TestAccountDataConcurrentWrites(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		var notes notifications
		s := newUserDataServer(t, db, notes.notify)
		InsertTestUser(t, db, "alice", false)

		const writers = 40
		seen := map[string]int64{}
		var since int64
		read := func() {
			entries, latest, err := s.AccountDataSince(ctx, "@alice:test", since)
			if err != nil {
				t.Error(err)
				return
			}
			for _, e := range entries {
				if _, dup := seen[e.Type]; dup {
					t.Errorf("%s returned twice", e.Type)
				}
				seen[e.Type] = e.Position
			}
			since = latest
		}
		var wg sync.WaitGroup
		for i := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := s.storeAccountData(ctx, "alice", "", fmt.Sprintf("com.example.t%d", i), json.RawMessage(`{"n":1}`)); err != nil {
					t.Error(err)
				}
			}()
		}
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
	poll:
		for {
			select {
			case <-done:
				break poll
			default:
				read()
			}
		}
		read()
		if len(seen) != writers {
			t.Fatalf("reader saw %d of %d writes", len(seen), writers)
		}
		positions := map[int64]bool{}
		for _, p := range seen {
			positions[p] = true
		}
		if len(positions) != writers || len(notes.list()) != writers {
			t.Errorf("%d distinct positions and %d notifications for %d writes", len(positions), len(notes.list()), writers)
		}
	})
}
