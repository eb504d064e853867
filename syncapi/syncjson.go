package syncapi

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"slices"

	"github.com/myelin-chat/myelin/internal/httpx"
)

// syncBody is json.Marshal(resp), byte for byte, for a response whose
// joined rooms' state and timeline events the formatter rendered in the
// client format (format's output is already what json.Marshal makes of
// it: compact, HTML characters escaped). json.Marshal would scan and
// copy every event again — for an initial sync, most of the response;
// here each event is copied once, straight to where json.Marshal puts
// it. The response is written out piece by piece (writeTo) rather than
// assembled first: at 500 rooms the whole body is ~3 MB, held beside the
// rendered events it copies until the last byte is sent.
// TestInitialSyncBatchedMatchesPerRoom compares it with json.Marshal
// (through SyncJSON).
type syncBody struct {
	whole   []byte // json.Marshal(resp) when the pieces cannot be used
	top     []byte // the response with an empty joined-rooms map
	at      int    // where in top the joined-rooms map's "{}" is
	roomIDs []string
	shells  []roomShell
	size    int // the length of the body, exactly
}

// newSyncBody prepares resp's body: everything but the events is
// marshalled here, so that writing it can no longer fail but for the
// writer's errors.
func newSyncBody(resp *syncResponse) (*syncBody, error) {
	whole := func() (*syncBody, error) {
		b, err := json.Marshal(resp)
		return &syncBody{whole: b, size: len(b)}, err
	}
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
		return whole()
	}
	at += len(marker) - 2 // at the join map's "{}"
	roomIDs := make([]string, 0, len(joined))
	for id, jr := range joined {
		if jr == nil || jr.Timeline.Events == nil || (jr.State != nil && jr.State.Events == nil) ||
			(jr.StateAfter != nil && jr.StateAfter.Events == nil) ||
			(jr.StateAfterUnstable != nil && jr.StateAfterUnstable.Events == nil) {
			return whole() // a null list: not what the slots hold
		}
		roomIDs = append(roomIDs, id)
	}
	slices.Sort(roomIDs) // encoding/json's order of string map keys
	b := &syncBody{top: top, at: at, roomIDs: roomIDs, shells: make([]roomShell, len(roomIDs))}
	b.size = len(top) + max(len(roomIDs)-1, 0) // the rooms' commas
	var quoted []byte
	for i, id := range roomIDs {
		if b.shells[i], err = joinedRoomShell(joined[id]); err != nil {
			return nil, err
		}
		quoted = httpx.AppendJSONString(quoted[:0], id)
		b.size += len(quoted) + 1 + b.shells[i].size() // "id":room
	}
	return b, nil
}

// writeTo writes the body to w, in pieces of at most a buffer's size
// beyond the events, which it copies from the rendered response.
func (b *syncBody) writeTo(w io.Writer) error {
	if b.whole != nil {
		_, err := w.Write(b.whole)
		return err
	}
	bw := bufio.NewWriterSize(w, 32<<10)
	bw.Write(b.top[:b.at])
	bw.WriteByte('{')
	var quoted []byte
	for i, id := range b.roomIDs {
		if i > 0 {
			bw.WriteByte(',')
		}
		quoted = httpx.AppendJSONString(quoted[:0], id)
		bw.Write(quoted)
		bw.WriteByte(':')
		b.shells[i].writeTo(bw)
	}
	bw.WriteByte('}')
	bw.Write(b.top[b.at+2:])
	return bw.Flush() // a bufio.Writer keeps its first error
}

// marshalSync is the body newSyncBody prepares, in one buffer of its
// exact size.
func marshalSync(resp *syncResponse) ([]byte, error) {
	b, err := newSyncBody(resp)
	if err != nil {
		return nil, err
	}
	buf := bytes.NewBuffer(make([]byte, 0, b.size))
	if err := b.writeTo(buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
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
	ends  []int // for each list, the offset in body of its slot's "]"
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
	if err != nil {
		return roomShell{}, err
	}
	const slot = `"events":[]`
	ends := make([]int, len(lists))
	from := 0
	for i := range lists {
		at := bytes.Index(body[from:], []byte(slot))
		if at < 0 {
			return roomShell{}, errNoSlot
		}
		from += at + len(slot) - 1
		ends[i] = from
	}
	return roomShell{body: body, lists: lists, ends: ends}, nil
}

// size is the length of what writeTo writes.
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

// writeTo writes json.Marshal(jr) for the room r is the shell of: the
// body with each list's events in its slot.
func (r roomShell) writeTo(w *bufio.Writer) {
	from := 0
	for i, events := range r.lists {
		w.Write(r.body[from:r.ends[i]])
		for j, e := range events {
			if j > 0 {
				w.WriteByte(',')
			}
			w.Write(e)
		}
		from = r.ends[i]
	}
	w.Write(r.body[from:])
}

// errNoSlot: a joined room's JSON lacked an events list it must have.
var errNoSlot = errors.New("sync response: events list not found")
