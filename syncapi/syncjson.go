package syncapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"slices"
)

// marshalSync is json.Marshal(resp), byte for byte, for a response whose
// joined rooms' state and timeline events the formatter rendered in the
// client format (format's output is already what json.Marshal makes of
// it: compact, HTML characters escaped). json.Marshal would scan and
// copy every event again — for an initial sync, most of the response;
// here they are copied once, into the places json.Marshal gives them.
// TestMarshalSyncMatchesMarshal compares the two.
func marshalSync(resp *syncResponse) ([]byte, error) {
	joined := resp.Rooms.Join
	shell := *resp
	shell.Rooms.Join = map[string]*joinedRoom{}
	top, err := json.Marshal(&shell)
	if err != nil {
		return nil, err
	}
	// next_batch comes first and its value holds no quote, so the first
	// match is the rooms section's (struct field order).
	const marker = `"rooms":{"join":{}`
	at := bytes.Index(top, []byte(marker))
	if at < 0 {
		return json.Marshal(resp)
	}
	at += len(marker) - 2 // at the join map's "{}"
	roomIDs := make([]string, 0, len(joined))
	size := len(top)
	for id, jr := range joined {
		if jr == nil || jr.Timeline.Events == nil || (jr.State != nil && jr.State.Events == nil) ||
			(jr.StateAfter != nil && jr.StateAfter.Events == nil) ||
			(jr.StateAfterUnstable != nil && jr.StateAfterUnstable.Events == nil) {
			return json.Marshal(resp) // a null list: not what the slots hold
		}
		roomIDs = append(roomIDs, id)
		size += len(id) + 256
		for _, l := range [][]json.RawMessage{jr.Timeline.Events, stateEvents(jr)} {
			for _, e := range l {
				size += len(e) + 1
			}
		}
	}
	slices.Sort(roomIDs) // encoding/json's order of string map keys
	out := make([]byte, 0, size)
	out = append(out, top[:at]...)
	out = append(out, '{')
	for i, id := range roomIDs {
		if i > 0 {
			out = append(out, ',')
		}
		out = appendString(out, id)
		out = append(out, ':')
		if out, err = appendJoinedRoom(out, joined[id]); err != nil {
			return nil, err
		}
	}
	out = append(out, '}')
	return append(out, top[at+2:]...), nil
}

// stateEvents is the state list a joined room carries, whichever field
// holds it.
func stateEvents(jr *joinedRoom) []json.RawMessage {
	for _, l := range []*eventList{jr.State, jr.StateAfter, jr.StateAfterUnstable} {
		if l != nil {
			return l.Events
		}
	}
	return nil
}

// appendJoinedRoom appends json.Marshal(jr): jr is marshalled with its
// state and timeline lists empty, and their events go where the two
// `"events":[]` are (in field order the state list comes before the
// timeline and nothing before them has an "events" member; inside a
// string the quotes would be escaped).
func appendJoinedRoom(dst []byte, jr *joinedRoom) ([]byte, error) {
	shell := *jr
	empty := []json.RawMessage{}
	var lists [][]json.RawMessage
	for _, l := range []**eventList{&shell.State, &shell.StateAfter, &shell.StateAfterUnstable} {
		if *l != nil {
			lists = append(lists, (*l).Events)
			*l = &eventList{Events: empty}
		}
	}
	lists = append(lists, jr.Timeline.Events)
	shell.Timeline.Events = empty
	body, err := json.Marshal(&shell)
	if err != nil {
		return nil, err
	}
	const slot = `"events":[]`
	for _, events := range lists {
		at := bytes.Index(body, []byte(slot))
		if at < 0 {
			return nil, errNoSlot
		}
		at += len(slot) - 1 // at "]"
		dst = append(dst, body[:at]...)
		for i, e := range events {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = append(dst, e...)
		}
		body = body[at:]
	}
	return append(dst, body...), nil
}

// errNoSlot: a joined room's JSON lacked an events list it must have.
var errNoSlot = errors.New("sync response: events list not found")
