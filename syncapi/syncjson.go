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
	for id, jr := range joined {
		if jr == nil || jr.Timeline.Events == nil || (jr.State != nil && jr.State.Events == nil) ||
			(jr.StateAfter != nil && jr.StateAfter.Events == nil) ||
			(jr.StateAfterUnstable != nil && jr.StateAfterUnstable.Events == nil) {
			return json.Marshal(resp) // a null list: not what the slots hold
		}
		roomIDs = append(roomIDs, id)
	}
	slices.Sort(roomIDs) // encoding/json's order of string map keys
	// Every room's shell first, so that the response is allocated once at
	// its exact size: a buffer that grows copies the whole response again
	// and holds both copies meanwhile (at 500 rooms, ~3 MB each).
	shells := make([]roomShell, len(roomIDs))
	size := len(top) + max(len(roomIDs)-1, 0) // the rooms' commas
	for i, id := range roomIDs {
		if shells[i], err = joinedRoomShell(joined[id]); err != nil {
			return nil, err
		}
		// The ID quoted and ':'; an ID with characters to escape (none
		// in practice) only makes append grow the buffer.
		size += len(id) + 3 + shells[i].size()
	}
	out := make([]byte, 0, size)
	out = append(out, top[:at]...)
	out = append(out, '{')
	for i, id := range roomIDs {
		if i > 0 {
			out = append(out, ',')
		}
		out = appendString(out, id)
		out = append(out, ':')
		if out, err = shells[i].appendTo(out); err != nil {
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

// roomShell is a joined room marshalled with its state and timeline
// lists empty, and the events that go where those lists' `"events":[]`
// are (in field order the state list comes before the timeline and
// nothing before them has an "events" member; inside a string the quotes
// would be escaped).
type roomShell struct {
	body  []byte
	lists [][]json.RawMessage
}

func joinedRoomShell(jr *joinedRoom) (roomShell, error) {
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
	return roomShell{body: body, lists: lists}, err
}

// size is the length of what appendTo appends.
func (r roomShell) size() int {
	n := len(r.body)
	for _, events := range r.lists {
		n += max(len(events)-1, 0) // commas
		for _, e := range events {
			n += len(e)
		}
	}
	return n
}

// appendTo appends json.Marshal(jr) for the room r is the shell of.
func (r roomShell) appendTo(dst []byte) ([]byte, error) {
	const slot = `"events":[]`
	body := r.body
	for _, events := range r.lists {
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
