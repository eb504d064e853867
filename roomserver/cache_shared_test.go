package roomserver

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// splitPair returns two roomservers built as two split-mode processes
// would build them: each on its own connection pool to one PostgreSQL schema,
// each with its own caches (Deps.Shared).
func splitPair(t *testing.T) (a, b *Server) {
	t.Helper()
	opts := storagetest.PostgresOptions(t) // skips without MYELIN_TEST_POSTGRES
	open := func() *Server {
		db, err := storage.Open(context.Background(), opts)
		if err != nil {
			t.Fatalf("opening postgres: %v", err)
		}
		t.Cleanup(func() { db.Close() })
		s, err := New(context.Background(), Deps{DB: db, ServerName: testServer, Key: testKey(), Shared: true,
			Config: config.RoomServer{DefaultRoomVersion: "12"}})
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		return s
	}
	return open(), open()
}

// TestSplitModeSeesRewrites: two roomserver processes on one PostgreSQL
// database. Process B has read (and cached) an event held as an outlier
// and a state snapshot naming it; process A then promotes the outlier
// (a new event NID, the snapshot entry moved to it) and redacts a
// message B has cached. B serves the promoted event as a timeline event
// under its new stream position, still finds it in the snapshot — also
// once its bounded event cache has been emptied — and serves the
// redacted message redacted. No message between the processes is
// involved: B checks what it cached against the rows (cache_shared.go).
func TestSplitModeSeesRewrites(t *testing.T) {
	ctx := context.Background()
	a, b := splitPair(t)
	d := baseRoom(t, "10")
	for _, name := range []string{"create", "alice-join", "pl0", "jr", "bob-join"} {
		if r := d.input(t, a, name); r.Outcome != Accepted {
			t.Fatalf("%s: %s %s", name, r.Outcome, r.Reason)
		}
	}
	// The history visibility comes first as part of a gap's state (an
	// outlier the state before m3 holds), then as a timeline event.
	d.add("hv", alice, "m.room.history_visibility", ptr(""), `{"history_visibility":"joined"}`, "bob-join")
	d.add("m3", bob, "m.room.message", nil, `{"msgtype":"m.text","body":"after the gap"}`, "hv")
	hv, m3 := d.byName["hv"].EventID(), d.byName["m3"].EventID()
	var state []json.RawMessage
	for _, e := range d.stateAfter["hv"] {
		state = append(state, e.JSON())
	}
	if r, err := a.InputWithState(ctx, InputWithStateRequest{RoomVersion: "10", JSON: d.byName["m3"].JSON(),
		PrevStates: [][]json.RawMessage{state}}); err != nil || r.Outcome != Accepted {
		t.Fatalf("m3 with the gap's state: %+v, %v", r, err)
	}
	secret, err := a.SendEvent(ctx, SendEventRequest{RoomID: d.roomID, Sender: bob, Type: "m.room.message",
		Content: json.RawMessage(`{"msgtype":"m.text","body":"a secret"}`)})
	if err != nil {
		t.Fatal(err)
	}

	// B reads all three: the outlier (invisible), m3 (whose visibility
	// reads hv through the snapshot before it) and the secret.
	if _, err := b.Event(ctx, alice, hv); !mxerr.Is(err, mxerr.NotFound) {
		t.Fatalf("B, the outlier: %v, want M_NOT_FOUND", err)
	}
	if _, err := b.Event(ctx, alice, m3); err != nil {
		t.Fatalf("B, m3 before the promotion: %v", err)
	}
	if ev, err := b.Event(ctx, alice, secret.EventID); err != nil || !json.Valid(ev.Content) || string(ev.Content) == "{}" {
		t.Fatalf("B, the secret before its redaction: %+v, %v", ev, err)
	}

	// A promotes hv and redacts the secret.
	r := d.input(t, a, "hv")
	if r.Outcome != Accepted {
		t.Fatalf("promotion on A: %s %s", r.Outcome, r.Reason)
	}
	if _, err := a.SendEvent(ctx, SendEventRequest{RoomID: d.roomID, Sender: alice, Type: "m.room.redaction",
		Content: json.RawMessage(`{}`), Redacts: secret.EventID}); err != nil {
		t.Fatal(err)
	}

	// Each check stands alone (Errorf): each is a different cache.
	if ev, err := b.Event(ctx, alice, hv); err != nil {
		t.Errorf("B, the promoted event: %v", err)
	} else if ev.StreamPos != r.StreamPos {
		t.Errorf("B serves the promoted event at stream position %d, A put it at %d", ev.StreamPos, r.StreamPos)
	}
	if _, err := b.Event(ctx, alice, m3); err != nil {
		t.Errorf("B, m3 after the promotion: %v", err)
	}
	if red, err := b.Event(ctx, alice, secret.EventID); err != nil {
		t.Errorf("B, the redacted secret: %v", err)
	} else if string(red.Content) != "{}" || red.RedactedBecause == "" {
		t.Errorf("B serves the redacted secret as %s (redacted_because %q)", red.Content, red.RedactedBecause)
	}
	// The event cache is bounded and emptied when full: what B
	// remembers of the snapshot before m3 must not name the old NID.
	b.events = newEventCache(4096)
	if _, err := b.Event(ctx, alice, m3); err != nil {
		t.Errorf("B, m3 after the promotion, its event cache emptied: %v", err)
	}
	st, err := b.StateAt(ctx, alice, m3)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range st.Before {
		if e.EventID == hv {
			found = e.StreamPos == r.StreamPos
		}
	}
	if !found {
		t.Errorf("B: the state before m3 lacks the promoted event at position %d", r.StreamPos)
	}
}

// TestSplitModeOldSnapshotKeepsUnredacted: process B caches a message
// that process A has redacted (B's cache was told nothing: no drop, no
// new generation), while a read transaction of B whose snapshot predates
// the redaction renders that message for /sync (filterVisibleWith). Its
// row is unredacted in that snapshot, and the redaction is not in its
// timeline: the read serves it unredacted, as its snapshot has it, not
// the cached redacted parse.
func TestSplitModeOldSnapshotKeepsUnredacted(t *testing.T) {
	ctx := context.Background()
	a, b := splitPair(t)
	d := baseRoom(t, "10")
	for _, name := range []string{"create", "alice-join", "pl0", "jr", "bob-join"} {
		if r := d.input(t, a, name); r.Outcome != Accepted {
			t.Fatalf("%s: %s %s", name, r.Outcome, r.Reason)
		}
	}
	secret, err := a.SendEvent(ctx, SendEventRequest{RoomID: d.roomID, Sender: bob, Type: "m.room.message",
		Content: json.RawMessage(`{"msgtype":"m.text","body":"a secret"}`)})
	if err != nil {
		t.Fatal(err)
	}
	err = b.read(ctx, func(q storage.Querier) error {
		byID, err := eventRowsByID(ctx, q, []string{secret.EventID}) // takes the snapshot
		r := byID[secret.EventID]
		if err != nil || r == nil || r.RedactedBecause != nil {
			return fmt.Errorf("the secret before its redaction: %v, %v", r, err)
		}
		rows := []*eventRow{r}
		if _, err := a.SendEvent(ctx, SendEventRequest{RoomID: d.roomID, Sender: alice, Type: "m.room.redaction",
			Content: json.RawMessage(`{}`), Redacts: secret.EventID}); err != nil {
			t.Fatal(err)
		}
		fresh, err := b.loadEventsByID(ctx, b.db.Reader(), nil, []string{secret.EventID})
		if err != nil {
			return err
		}
		if e := fresh[secret.EventID]; e == nil || e.row.RedactedBecause == nil || b.events.getID(secret.EventID, math.MaxUint64) == nil {
			t.Fatalf("B after the redaction: %s, want the redacted row cached", rowOf(e))
		}
		evs, err := b.filterVisibleWith(ctx, q, b.newVisibility(q, alice), d.roomID, rows, map[string]string{})
		if err != nil {
			return err
		}
		if len(evs) != 1 || evs[0].RedactedBecause != "" || !strings.Contains(string(evs[0].Content), "a secret") {
			t.Errorf("B's old snapshot renders the secret as %d events %v, want it unredacted", len(evs), evs)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
