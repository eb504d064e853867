package roomserver

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// pduAnswers is every PDU method's answer (errors as text), for
// comparing two PDUs of the same event.
func pduAnswers(p gomatrixserverlib.PDU) map[string]any {
	str := func(v any, err error) any { return fmt.Sprint(v, " | ", err) }
	now := time.UnixMilli(1_700_000_000_500)
	out := map[string]any{
		"EventID": p.EventID(), "StateKey": p.StateKey(), "StateKeyEquals('')": p.StateKeyEquals(""),
		"StateKeyEquals(@bob)": p.StateKeyEquals("@bob:example.org"), "Type": p.Type(),
		"Content": string(p.Content()), "Version": p.Version(), "RoomID": p.RoomID().String(),
		"Redacts": p.Redacts(), "Redacted": p.Redacted(), "PrevEventIDs": p.PrevEventIDs(),
		"OriginServerTS": p.OriginServerTS(), "SenderID": p.SenderID(), "Unsigned": string(p.Unsigned()),
		"Depth": p.Depth(), "JSON": string(p.JSON()), "AuthEventIDs": p.AuthEventIDs(),
		"PrevStateEventIDs": p.PrevStateEventIDs(),
		"IsSticky":          p.IsSticky(now, now), "StickyEndTime": p.StickyEndTime(now),
	}
	jr, err := p.JoinRule()
	out["JoinRule"] = str(jr, err)
	hv, err := p.HistoryVisibility()
	out["HistoryVisibility"] = str(hv, err)
	m, err := p.Membership()
	out["Membership"] = str(m, err)
	pl, err := p.PowerLevels()
	out["PowerLevels"] = str(pl, err)
	hj, err := p.ToHeaderedJSON()
	out["ToHeaderedJSON"] = str(string(hj), err)
	mj, err := p.(interface{ MarshalJSON() ([]byte, error) }).MarshalJSON()
	out["MarshalJSON"] = str(string(mj), err)
	withUnsigned, err := p.SetUnsigned(map[string]int{"age": 5})
	if err == nil {
		out["SetUnsigned"] = string(withUnsigned.JSON())
	} else {
		out["SetUnsigned"] = err.Error()
	}
	return out
}

// comparePDUs reports each method whose answers differ.
func comparePDUs(t *testing.T, what string, got, want gomatrixserverlib.PDU) {
	t.Helper()
	g, w := pduAnswers(got), pduAnswers(want)
	for k := range w {
		if !reflect.DeepEqual(g[k], w[k]) {
			t.Errorf("%s: %s = %#v, parsed event says %#v", what, k, g[k], w[k])
		}
	}
}

// TestLocalPDUMatchesParsed: for every room version buildSigned writes
// and a spread of event shapes, the localPDU it returns answers every
// PDU method as gomatrixserverlib's parse of the same bytes does, also
// after each method that changes an event in place (Redact,
// SetUnsignedField, Sign) has run on both.
func TestLocalPDUMatchesParsed(t *testing.T) {
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	signer := filledSigner(t, key, 256)
	empty, member := "", "@bob:example.org"
	events := []struct {
		name     string
		typ      string
		stateKey *string
		content  string
		redacts  string
	}{
		{"message", "m.room.message", nil, `{"msgtype":"m.text","body":"hello é"}`, ""},
		{"empty content", "m.custom", nil, `{}`, ""},
		{"sticky-looking content", "m.custom", nil, `{"sticky":{"duration_ms":60000}}`, ""},
		{"topic", "m.room.topic", &empty, `{"topic":"a topic"}`, ""},
		{"join rules", "m.room.join_rules", &empty, `{"join_rule":"public"}`, ""},
		{"history visibility", "m.room.history_visibility", &empty, `{"history_visibility":"joined"}`, ""},
		{"member", "m.room.member", &member, `{"membership":"join","displayname":"Bob"}`, ""},
		{"power levels", "m.room.power_levels", &empty, `{"users":{"@a:example.org":100},"events":{"m.room.name":50},"ban":50}`, ""},
		{"redaction top-level", "m.room.redaction", nil, `{"reason":"spam"}`, "$abc"},
		{"redaction content", "m.room.redaction", nil, `{"reason":"spam","redacts":"$abc"}`, ""},
	}
	versions := everyRoomVersion()
	ts := time.UnixMilli(1_700_000_000_123)
	local := 0
	for _, v := range versions {
		impl, err := roomVersion(v)
		if err != nil {
			t.Fatal(err)
		}
		roomID := "!room:example.org"
		if impl.DomainlessRoomIDs() {
			roomID = "!AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
		}
		for _, e := range events {
			build := func() gomatrixserverlib.PDU {
				eb := impl.NewEventBuilderFromProtoEvent(&gomatrixserverlib.ProtoEvent{
					SenderID: "@alice:example.org", RoomID: roomID, Type: e.typ, StateKey: e.stateKey,
					Content: []byte(e.content), Redacts: e.redacts, Depth: 7,
					PrevEvents: []string{"$prev1", "$prev2"}, AuthEvents: []string{"$pl", "$member"},
				})
				pdu, err := buildSigned(impl, eb, ts, "example.org", "ed25519:k1", signer)
				if errors.Is(err, errNoFastPath) {
					return nil // versions 1 and 2: EventBuilder.Build
				}
				if err != nil {
					t.Fatalf("v%s %s: %v", v, e.name, err)
				}
				return pdu
			}
			parse := func(pdu gomatrixserverlib.PDU) gomatrixserverlib.PDU {
				parsed, err := impl.NewEventFromTrustedJSONWithEventID(pdu.EventID(), pdu.JSON(), false)
				if err != nil {
					t.Fatalf("v%s %s: %v", v, e.name, err)
				}
				return parsed
			}
			what := fmt.Sprintf("v%s %s", v, e.name)
			got := build()
			if got == nil {
				continue
			}
			if _, ok := got.(*localPDU); !ok {
				t.Errorf("%s: buildSigned returned %T, not a localPDU", what, got)
				continue
			}
			local++
			comparePDUs(t, what, got, parse(got))

			got = build()
			want := parse(got)
			got.Redact()
			want.Redact()
			comparePDUs(t, what+" after Redact", got, want)

			got = build()
			want = parse(got)
			if err1, err2 := got.SetUnsignedField("transaction_id", "t1"), want.SetUnsignedField("transaction_id", "t1"); fmt.Sprint(err1) != fmt.Sprint(err2) {
				t.Errorf("%s: SetUnsignedField error %v, parsed event's %v", what, err1, err2)
			}
			comparePDUs(t, what+" after SetUnsignedField", got, want)

			got = build()
			want = parse(got)
			signedGot := got.Sign("other.example.org", "ed25519:k2", key)
			signedWant := want.Sign("other.example.org", "ed25519:k2", key)
			comparePDUs(t, what+" Sign's result", signedGot, signedWant)
			comparePDUs(t, what+" after Sign", got, want)
		}
	}
	if local < 10*len(events) {
		t.Errorf("only %d events were localPDUs", local)
	}
}

// TestSendKeepsLocalPDUUnparsed: a message sent through SendEvent (built,
// authorised, written, its timeline hook run, cached) is held as a
// localPDU whose bytes were never parsed back, and reading it back gives
// the stored event.
func TestSendKeepsLocalPDUUnparsed(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s := newTestServer(t, db)
		ctx := context.Background()
		for _, v := range []string{"10", "12"} {
			room := mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: v, Preset: PresetPublicChat}).RoomID
			id := mustSend(t, s, room, alice, "m.room.message", nil, `{"msgtype":"m.text","body":"hi"}`)
			cached := s.events.getID(id, math.MaxUint64)
			if cached == nil {
				t.Fatalf("v%s: the sent event is not cached", v)
			}
			local, ok := cached.pdu.(*localPDU)
			if !ok {
				t.Fatalf("v%s: cached PDU is %T, not a localPDU", v, cached.pdu)
			}
			if local.parsed != nil {
				t.Errorf("v%s: the send parsed its own event back", v)
			}
			stored, err := eventRowByID(ctx, db.Reader(), id)
			if err != nil {
				t.Fatal(err)
			}
			if string(stored.JSON) != string(local.JSON()) {
				t.Errorf("v%s: stored JSON %s, PDU's %s", v, stored.JSON, local.JSON())
			}
		}
	})
}

// TestStateAuthEventsMatchesAuthEvents: build's provider answers every
// AuthEventProvider method as gomatrixserverlib.AuthEvents over the same
// events does (a later event of a (type, state key) winning), refuses an
// event without a state key as NewAuthEvents does, and Valid tells two
// rooms apart.
func TestStateAuthEventsMatchesAuthEvents(t *testing.T) {
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	impl, err := roomVersion("10")
	if err != nil {
		t.Fatal(err)
	}
	ts := time.UnixMilli(1_700_000_000_123)
	ev := func(roomID, typ string, stateKey *string, content string) gomatrixserverlib.PDU {
		eb := impl.NewEventBuilderFromProtoEvent(&gomatrixserverlib.ProtoEvent{
			SenderID: "@alice:example.org", RoomID: roomID, Type: typ, StateKey: stateKey,
			Content: []byte(content), Depth: 3, PrevEvents: []string{"$p"}, AuthEvents: []string{"$a"},
		})
		pdu, err := eb.Build(ts, "example.org", "ed25519:k1", key)
		if err != nil {
			t.Fatal(err)
		}
		return pdu
	}
	r := "!r:example.org"
	state := []gomatrixserverlib.PDU{
		ev(r, "m.room.create", ptr(""), `{"creator":"@alice:example.org"}`),
		ev(r, "m.room.join_rules", ptr(""), `{"join_rule":"invite"}`),
		ev(r, "m.room.power_levels", ptr(""), `{"users":{"@alice:example.org":100}}`),
		ev(r, "m.room.member", ptr("@alice:example.org"), `{"membership":"join"}`),
		ev(r, "m.room.member", ptr("@bob:example.org"), `{"membership":"invite"}`),
		ev(r, "m.room.third_party_invite", ptr("tok"), `{"display_name":"x"}`),
		ev(r, "m.room.join_rules", ptr(""), `{"join_rule":"public"}`), // a later one wins
	}
	want, err := gomatrixserverlib.NewAuthEvents(state)
	if err != nil {
		t.Fatal(err)
	}
	got, err := newStateAuthEvents(state)
	if err != nil {
		t.Fatal(err)
	}
	id := func(p gomatrixserverlib.PDU, err error) string {
		if err != nil {
			return "error " + err.Error()
		}
		if p == nil {
			return "none"
		}
		return p.EventID()
	}
	pairs := [][2]string{
		{id(got.Create()), id(want.Create())},
		{id(got.JoinRules()), id(want.JoinRules())},
		{id(got.PowerLevels()), id(want.PowerLevels())},
		{id(got.Member("@alice:example.org")), id(want.Member("@alice:example.org"))},
		{id(got.Member("@bob:example.org")), id(want.Member("@bob:example.org"))},
		{id(got.Member("@carol:example.org")), id(want.Member("@carol:example.org"))},
		{id(got.ThirdPartyInvite("tok")), id(want.ThirdPartyInvite("tok"))},
		{id(got.ThirdPartyInvite("other")), id(want.ThirdPartyInvite("other"))},
		{fmt.Sprint(got.Valid()), fmt.Sprint(want.Valid())},
	}
	for i, p := range pairs {
		if p[0] != p[1] {
			t.Errorf("method %d: %s, AuthEvents says %s", i, p[0], p[1])
		}
	}
	// The auth events a join of bob's selects through either provider.
	selected := func(provider gomatrixserverlib.AuthEventProvider) []string {
		eb := impl.NewEventBuilderFromProtoEvent(&gomatrixserverlib.ProtoEvent{
			SenderID: "@bob:example.org", RoomID: r, Type: "m.room.member", StateKey: ptr("@bob:example.org"),
			Content: []byte(`{"membership":"join"}`),
		})
		if err := eb.AddAuthEvents(provider); err != nil {
			t.Fatal(err)
		}
		return eb.AuthEvents.([]string)
	}
	if g, w := selected(got), selected(want); !reflect.DeepEqual(g, w) {
		t.Errorf("selected auth events %v, AuthEvents selects %v", g, w)
	}

	other := append(append([]gomatrixserverlib.PDU{}, state...), ev("!other:example.org", "m.room.topic", ptr(""), `{}`))
	two, _ := newStateAuthEvents(other)
	twoWant, _ := gomatrixserverlib.NewAuthEvents(other)
	if two.Valid() || two.Valid() != twoWant.Valid() {
		t.Errorf("two rooms: Valid %v, AuthEvents says %v", two.Valid(), twoWant.Valid())
	}
	message := ev(r, "m.room.message", nil, `{}`)
	_, gotErr := newStateAuthEvents(append(state, message))
	_, wantErr := gomatrixserverlib.NewAuthEvents(append(state, message))
	if gotErr == nil || fmt.Sprint(gotErr) != fmt.Sprint(wantErr) {
		t.Errorf("an event without a state key: error %v, NewAuthEvents says %v", gotErr, wantErr)
	}
}

// TestListsImpliedCreateLocal: listsImpliedCreate answers for a localPDU
// (read from its fields) as for the parse of its bytes, listing the
// create event or not.
func TestListsImpliedCreateLocal(t *testing.T) {
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	signer := filledSigner(t, key, 4)
	impl, err := roomVersion("12")
	if err != nil {
		t.Fatal(err)
	}
	roomID := "!AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
	for _, c := range []struct {
		auth []string
		want bool
	}{
		{[]string{"$pl", "$member"}, false},
		{[]string{"$pl", "$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "$member"}, true},
	} {
		eb := impl.NewEventBuilderFromProtoEvent(&gomatrixserverlib.ProtoEvent{
			SenderID: "@alice:example.org", RoomID: roomID, Type: "m.room.message",
			Content: []byte(`{}`), Depth: 3, PrevEvents: []string{"$p"}, AuthEvents: c.auth,
		})
		pdu, err := buildSigned(impl, eb, time.UnixMilli(1_700_000_000_123), "example.org", "ed25519:k1", signer)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := pdu.(*localPDU); !ok {
			t.Fatalf("buildSigned returned %T", pdu)
		}
		parsed, err := impl.NewEventFromTrustedJSONWithEventID(pdu.EventID(), pdu.JSON(), false)
		if err != nil {
			t.Fatal(err)
		}
		if got, fromParse := listsImpliedCreate(pdu), listsImpliedCreate(parsed); got != c.want || fromParse != c.want {
			t.Errorf("auth_events %v: localPDU %v, parsed %v, want %v", c.auth, got, fromParse, c.want)
		}
	}
}

// TestRoomIDMemo: the memo answers as spec.NewRoomID does, the first
// time and from memory, for room IDs with and without a domain; what the
// parse refuses it refuses every time and never keeps; and it stays
// within its bound.
func TestRoomIDMemo(t *testing.T) {
	m := roomIDMemo{ids: make(map[string]spec.RoomID)}
	valid := []string{"!abc:example.org", "!x:[::1]:8448", "!" + strings.Repeat("A", 42) + "_"}
	invalid := []string{"", "!", "abc:example.org", "!:example.org", "!abc:", "!" + strings.Repeat("A", 42), "!abc:exa mple.org"}
	for round := 0; round < 2; round++ {
		for _, id := range valid {
			want, err := spec.NewRoomID(id)
			if err != nil {
				t.Fatalf("%q: the library refuses it: %v", id, err)
			}
			got, ok := m.parse(id)
			if !ok || got != *want {
				t.Errorf("round %d, %q: got %#v, %v; want %#v", round, id, got, ok, *want)
			}
		}
		for _, id := range invalid {
			if _, err := spec.NewRoomID(id); err == nil {
				t.Fatalf("%q: the library accepts it", id)
			}
			if got, ok := m.parse(id); ok {
				t.Errorf("round %d, %q: accepted as %#v", round, id, got)
			}
			if _, kept := m.ids[id]; kept {
				t.Errorf("round %d, %q: refused ID kept", round, id)
			}
		}
	}
	for i := 0; i < maxRoomIDMemo+10; i++ {
		if _, ok := m.parse(fmt.Sprintf("!r%d:example.org", i)); !ok {
			t.Fatalf("room %d refused", i)
		}
		if len(m.ids) > maxRoomIDMemo {
			t.Fatalf("%d entries, bound %d", len(m.ids), maxRoomIDMemo)
		}
	}
}

// BenchmarkRoomIDMemo: a room version 12 room ID (no domain) parsed by
// gomatrixserverlib and remembered by the memo (docs/benchmarks.md,
// "perf25").
func BenchmarkRoomIDMemo(b *testing.B) {
	id := "!" + strings.Repeat("A", 42) + "_"
	b.Run("NewRoomID", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := spec.NewRoomID(id); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("memo", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := parsedRoomIDs.parse(id); !ok {
				b.Fatal("refused")
			}
		}
	})
}
