package syncapi

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/roomserver"
)

// appendClientEvent must give json.Marshal's bytes for every event, and
// fail exactly when json.Marshal fails.
func TestAppendClientEventMatchesMarshal(t *testing.T) {
	key, empty := "@bob:example.org", ""
	cases := []clientEvent{
		{Content: json.RawMessage(`{"body":"hi","msgtype":"m.text"}`), EventID: "$a", OriginServerTS: 1, Sender: "@a:b", Type: "m.room.message",
			Unsigned: &unsigned{Age: 5}},
		{Content: json.RawMessage(`{"membership":"join"}`), EventID: "$b", OriginServerTS: -3, Sender: "@a:b", StateKey: &key, Type: "m.room.member",
			Unsigned: &unsigned{Age: 0, TransactionID: "t<1>", Membership: "join", PrevContent: json.RawMessage(`{"membership":"invite"}`),
				PrevSender: "@c:d", ReplacesState: "$x"}},
		{Content: json.RawMessage(`{"body":"<b>bold</b> & \u2028 \u00e9 \"q\" \\"}`), EventID: "$c", Sender: "@a:b", StateKey: &empty, Type: "m.room.topic",
			Redacts: "$r", Unsigned: &unsigned{RedactedBy: "$red", Relations: json.RawMessage(`{"m.thread":{"count":2}}`)}},
		{Content: json.RawMessage("{ \"spaced\" : [ 1 , 2 ],\n\t\"x\":\"a b\" }"), EventID: "$d", Sender: "@é:b", Type: "m.\x01type", Unsigned: &unsigned{}},
		{Content: json.RawMessage("{\"line\":\"\xe2\x80\xa8\xe2\x80\xa9\",\"ok\":true}"), EventID: "$e\x7f", Sender: "bad\xffutf8", Type: "t"},
		{Content: json.RawMessage(`{}`), EventID: "", Sender: "", Type: "", Unsigned: &unsigned{Relations: json.RawMessage(`null`)}},
		{Content: json.RawMessage(`{"unterminated":`), EventID: "$f", Type: "t", Unsigned: &unsigned{}},
		{Content: json.RawMessage(`{}`), EventID: "$g", Type: "t", Unsigned: &unsigned{PrevContent: json.RawMessage(`{bad}`)}},
		{Content: json.RawMessage(`"just a string"`), EventID: "$h", Type: "t", Unsigned: &unsigned{Age: 1 << 40}},
	}
	for i, ce := range cases {
		want, wantErr := json.Marshal(ce)
		got, ok := appendClientEvent([]byte("prefix"), &ce)
		if ok != (wantErr == nil) {
			t.Errorf("case %d: ok %v, json.Marshal error %v", i, ok, wantErr)
			continue
		}
		if !ok {
			if string(got) != "prefix" {
				t.Errorf("case %d: failed but appended %q", i, got)
			}
			continue
		}
		if !bytes.Equal(got, append([]byte("prefix"), want...)) {
			t.Errorf("case %d:\ngot  %s\nwant prefix%s", i, got, want)
		}
	}
}

// FuzzAppendClientEvent compares appendClientEvent with json.Marshal on
// arbitrary strings and raw members.
func FuzzAppendClientEvent(f *testing.F) {
	f.Add(`{"body":"x"}`, "$id", "@s:x", "m.room.message", "", `{"a":1}`, "txn")
	f.Add("{ \"a\" : \"<&>\" }", "$\x00", "\xff", "t\u2028", "k", `null`, "")
	f.Add(`[1, 2]`, "", "", "", "\"", ``, "\\")
	f.Fuzz(func(t *testing.T, content, eventID, sender, typ, stateKey, prev, txn string) {
		ce := clientEvent{Content: json.RawMessage(content), EventID: eventID, Sender: sender, Type: typ, StateKey: &stateKey,
			Unsigned: &unsigned{Age: 7, TransactionID: txn, PrevContent: json.RawMessage(prev), PrevSender: sender}}
		if content == "" {
			ce.Content = json.RawMessage("{}")
		}
		want, err := json.Marshal(ce)
		got, ok := appendClientEvent(nil, &ce)
		if ok != (err == nil) || ok && !bytes.Equal(got, want) {
			t.Fatalf("got %q (%v), json.Marshal %q (%v)", got, ok, want, err)
		}
	})
}

// appendRaw copies raw JSON that is already compact — spaces inside
// strings included — without the encoder, and still compacts and escapes
// whatever json.Marshal would change, however strings and escapes sit
// around it.
func TestAppendRawMatchesMarshal(t *testing.T) {
	for _, raw := range []string{
		`{"body":"ping 12","msgtype":"m.text"}`,
		`{"body":"a\" b","x":1}`,
		`{"body":"a\" b", "x":1}`,
		`{"body":"a\\", "x":1}`,
		`{"body":"a\\\" b\t","x":[1,2]}`,
		"{\"body\":\"tab\\there\"}\n",
		`{"a":"x y"} `,
		` {"a":1}`,
		`{"a":"<b>"}`,
		"{\"a\":\"\xe2\x80\xa8\"}",
		`["a b",{"c":"d e"},"\u0022 ]"]`,
		`{"unterminated":"a b`,
		`{"a":"b"}}`,
	} {
		want, wantErr := json.Marshal(json.RawMessage(raw))
		got, ok := appendRaw([]byte("prefix"), json.RawMessage(raw))
		if ok != (wantErr == nil) {
			t.Errorf("%q: ok %v, json.Marshal error %v", raw, ok, wantErr)
			continue
		}
		if ok && !bytes.Equal(got, append([]byte("prefix"), want...)) {
			t.Errorf("%q:\ngot  %s\nwant prefix%s", raw, got, want)
		}
	}
	// A message whose body has a space — nearly every message — is copied.
	msg := json.RawMessage(`{"body":"hello there","msgtype":"m.text"}`)
	buf := make([]byte, 0, 256)
	if n := testing.AllocsPerRun(100, func() { _, _ = appendRaw(buf[:0], msg) }); n != 0 {
		t.Errorf("appendRaw of a compact message with spaces in its body: %v allocations, want 0", n)
	}
}

// TestFormatIsMarshalForm: what the client-format formatter writes is
// already json.Marshal's form of it as a json.RawMessage, for every
// event, so appendResponse may copy it without checking it again
// (eventFormatter.marshalled); a formatted event that cannot be encoded
// is nil, which both write as null. The federation format (the stored
// JSON) is not marked.
func TestFormatIsMarshalForm(t *testing.T) {
	key := "@bob:example.org"
	now := time.UnixMilli(1_000_000)
	f := &eventFormatter{now: now,
		txnIDs:      map[string]string{"$a": "t<1>&"},
		memberships: map[string]string{"$a": "join", "$b": "leave"},
		prevStates: map[string]*roomserver.PrevState{"$b": {Content: json.RawMessage("{ \"membership\" : \"invite <x>\" }"),
			Sender: "@c:d", EventID: "$p"}},
		relations: map[string]json.RawMessage{"$c": json.RawMessage(`{"m.thread": {"count": 2}}`)}}
	evs := []*roomserver.Event{
		{EventID: "$a", Sender: "@a:b", Type: "m.room.message", OriginServerTS: 999_000,
			Content: json.RawMessage("{ \"body\" : \"<b>hi</b> & \u2028 \u00e9 \\\"q\\\" \\\\\",\n\t\"msgtype\":\"m.text\" }")},
		{EventID: "$b", Sender: "@a:b", Type: "m.room.member", StateKey: &key, Content: json.RawMessage(`{"membership":"leave"}`)},
		{EventID: "$c", Sender: "@é:b", Type: "m.\x01type", Redacts: "$r", RedactedBecause: "$red", Content: nil},
		{EventID: "$d\x7f", Sender: "bad\xffutf8", Type: "t", Content: json.RawMessage("{\"line\":\"\xe2\x80\xa8\xe2\x80\xa9\"}")},
		{EventID: "$e", Type: "t", Content: json.RawMessage(`{"unterminated":`)},
	}
	if !f.marshalled() {
		t.Fatal("the client format is not marked as marshalled")
	}
	for i, out := range f.formatAll(evs) {
		want, err := json.Marshal([]json.RawMessage{out})
		if err != nil {
			t.Fatalf("event %d: %q does not encode: %v", i, out, err)
		}
		if got := "[" + string(out) + "]"; out == nil && string(want) != "[null]" || out != nil && got != string(want) {
			t.Errorf("event %d: formatted %s, json.Marshal makes %s of it", i, out, want)
		}
	}
	if (&eventFormatter{federation: true}).marshalled() {
		t.Fatal("the federation format is marked as marshalled")
	}
}

// TestAppendRawListMarshalled: a list marked as marshalled is copied as
// it is; an unmarked one is brought to json.Marshal's form (or refused).
func TestAppendRawListMarshalled(t *testing.T) {
	evs := []json.RawMessage{json.RawMessage(`{"a": "<b>"}`), nil}
	got, err := appendRawList(nil, evs, true)
	if err != nil || string(got) != `[{"a": "<b>"},null]` {
		t.Fatalf("marshalled list: %s, %v; want it copied as it is", got, err)
	}
	got, err = appendRawList(nil, evs, false)
	if want, _ := json.Marshal(evs); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("unmarked list: %s, %v; want %s", got, err, want)
	}
	if _, err := appendRawList(nil, []json.RawMessage{json.RawMessage(`{bad`)}, false); err == nil {
		t.Fatal("an unmarked invalid event was accepted")
	}
}
