package syncapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"sync"

	"github.com/myelin-chat/myelin/internal/httpx"
)

// appendResponse appends json.Marshal(resp), byte for byte, written
// without reflection. Every woken long poll's response is encoded here:
// json.Marshal walked the response's nested structs and maps by
// reflection and scanned every event (already compact, valid JSON from
// the formatter) again, about 20 µs for a one-message response, a sizable
// share of a woken response's CPU outside its reads. The sections that
// are rare in a woken response (invites, knocks, left rooms, a room's
// summary and thread counts) go through json.Marshal as they did.
// On an error (a raw event that is not valid JSON), dst is returned as
// given and the caller uses json.Marshal, which fails the same way.
// TestAppendResponseMatchesMarshal, and SyncJSON for every response the
// tests compute, compare it with json.Marshal.
func appendResponse(dst []byte, resp *syncResponse) ([]byte, error) {
	start := len(dst)
	out, err := appendResponseFields(dst, resp)
	if err != nil {
		return dst[:start], err
	}
	return out, nil
}

func appendResponseFields(b []byte, r *syncResponse) ([]byte, error) {
	var err error
	b = append(b, `{"next_batch":`...)
	b = httpx.AppendJSONString(b, r.NextBatch)
	b = append(b, `,"rooms":{"join":`...)
	if b, err = appendJoinedRooms(b, r.Rooms.Join); err != nil {
		return b, err
	}
	if len(r.Rooms.Invite) > 0 { // omitempty
		b = append(b, `,"invite":`...)
		if b, err = appendMarshal(b, r.Rooms.Invite); err != nil {
			return b, err
		}
	}
	b = append(b, `,"knock":`...)
	if b, err = appendMap(b, r.Rooms.Knock); err != nil {
		return b, err
	}
	b = append(b, `,"leave":`...)
	if b, err = appendMap(b, r.Rooms.Leave); err != nil {
		return b, err
	}
	b = append(b, `},"account_data":`...)
	if b, err = appendEventList(b, r.AccountData); err != nil {
		return b, err
	}
	b = append(b, `,"presence":`...)
	if b, err = appendEventList(b, r.Presence); err != nil {
		return b, err
	}
	b = append(b, `,"to_device":`...)
	if b, err = appendEventList(b, r.ToDevice); err != nil {
		return b, err
	}
	b = append(b, `,"device_lists":{"changed":`...)
	b = appendStrings(b, r.DeviceLists.Changed)
	b = append(b, `,"left":`...)
	b = appendStrings(b, r.DeviceLists.Left)
	b = append(b, `},"device_one_time_keys_count":`...)
	b = appendCounts(b, r.OneTimeKeysCount)
	b = append(b, `,"device_unused_fallback_key_types":`...)
	b = appendStrings(b, r.FallbackKeys)
	return append(b, '}'), nil
}

// appendJoinedRooms appends the joined rooms' map, keys in
// encoding/json's order (sorted).
func appendJoinedRooms(b []byte, rooms map[string]*joinedRoom) ([]byte, error) {
	if rooms == nil {
		return append(b, "null"...), nil
	}
	ids := make([]string, 0, len(rooms))
	for id := range rooms {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	b = append(b, '{')
	var err error
	for i, id := range ids {
		if i > 0 {
			b = append(b, ',')
		}
		b = httpx.AppendJSONString(b, id)
		b = append(b, ':')
		if b, err = appendJoinedRoom(b, rooms[id]); err != nil {
			return b, err
		}
	}
	return append(b, '}'), nil
}

// appendJoinedRoom appends jr's fields in joinedRoom's order, leaving
// out the omitempty ones json.Marshal leaves out.
func appendJoinedRoom(b []byte, jr *joinedRoom) ([]byte, error) {
	if jr == nil {
		return append(b, "null"...), nil
	}
	var err error
	b = append(b, '{')
	if jr.Summary != nil {
		b = append(b, `"summary":`...)
		if b, err = appendMarshal(b, jr.Summary); err != nil {
			return b, err
		}
		b = append(b, ',')
	}
	for _, l := range [...]struct {
		name string
		list *eventList
	}{{"state", jr.State}, {"state_after", jr.StateAfter}, {"org.matrix.msc4222.state_after", jr.StateAfterUnstable}} {
		if l.list == nil {
			continue
		}
		b = append(b, '"')
		b = append(b, l.name...)
		b = append(b, `":`...)
		if b, err = appendEventList(b, *l.list); err != nil {
			return b, err
		}
		b = append(b, ',')
	}
	b = append(b, `"timeline":{"events":`...)
	if b, err = appendRawList(b, jr.Timeline.Events, jr.Timeline.marshalled); err != nil {
		return b, err
	}
	b = append(b, `,"limited":`...)
	b = strconv.AppendBool(b, jr.Timeline.Limited)
	if jr.Timeline.PrevBatch != "" {
		b = append(b, `,"prev_batch":`...)
		b = httpx.AppendJSONString(b, jr.Timeline.PrevBatch)
	}
	b = append(b, `},"ephemeral":`...)
	if b, err = appendEventList(b, jr.Ephemeral); err != nil {
		return b, err
	}
	b = append(b, `,"account_data":`...)
	if b, err = appendEventList(b, jr.AccountData); err != nil {
		return b, err
	}
	if u := jr.UnreadNotifications; u != nil {
		b = append(b, `,"unread_notifications":{"notification_count":`...)
		b = strconv.AppendInt(b, int64(u.NotificationCount), 10)
		b = append(b, `,"highlight_count":`...)
		b = strconv.AppendInt(b, int64(u.HighlightCount), 10)
		b = append(b, '}')
	}
	if len(jr.UnreadThreadNotifications) > 0 { // omitempty
		b = append(b, `,"unread_thread_notifications":`...)
		if b, err = appendMarshal(b, jr.UnreadThreadNotifications); err != nil {
			return b, err
		}
	}
	return append(b, '}'), nil
}

func appendEventList(b []byte, l eventList) ([]byte, error) {
	b = append(b, `{"events":`...)
	b, err := appendRawList(b, l.Events, l.marshalled)
	if err != nil {
		return b, err
	}
	return append(b, '}'), nil
}

// appendRawList appends raw events as json.Marshal does a
// []json.RawMessage: a nil slice or element is null, and an element that
// is not valid JSON (an empty one included) is an error. When marshalled
// (eventList.marshalled), the elements are already in json.Marshal's
// form and are copied without being checked again: a woken response's
// events were checked and encoded by the formatter moments before.
func appendRawList(b []byte, evs []json.RawMessage, marshalled bool) ([]byte, error) {
	if evs == nil {
		return append(b, "null"...), nil
	}
	b = append(b, '[')
	for i, ev := range evs {
		if i > 0 {
			b = append(b, ',')
		}
		if ev == nil {
			b = append(b, "null"...)
			continue
		}
		if marshalled {
			b = append(b, ev...)
			continue
		}
		var ok bool
		if b, ok = appendRaw(b, ev); !ok {
			return b, errInvalidRaw
		}
	}
	return append(b, ']'), nil
}

func appendStrings(b []byte, ss []string) []byte {
	if ss == nil {
		return append(b, "null"...)
	}
	b = append(b, '[')
	for i, s := range ss {
		if i > 0 {
			b = append(b, ',')
		}
		b = httpx.AppendJSONString(b, s)
	}
	return append(b, ']')
}

// appendCounts appends a map of counts, keys sorted as json.Marshal
// sorts them.
func appendCounts(b []byte, counts map[string]int) []byte {
	if counts == nil {
		return append(b, "null"...)
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = httpx.AppendJSONString(b, k)
		b = append(b, ':')
		b = strconv.AppendInt(b, int64(counts[k]), 10)
	}
	return append(b, '}')
}

// appendMap appends a map that is usually empty in a woken response: {}
// (or null) at once, anything else through json.Marshal.
func appendMap[V any](b []byte, m map[string]V) ([]byte, error) {
	switch {
	case m == nil:
		return append(b, "null"...), nil
	case len(m) == 0:
		return append(b, "{}"...), nil
	}
	return appendMarshal(b, m)
}

func appendMarshal(b []byte, v any) ([]byte, error) {
	enc, err := json.Marshal(v)
	if err != nil {
		return b, err
	}
	return append(b, enc...), nil
}

// errInvalidRaw: a raw event in the response is not valid JSON.
var errInvalidRaw = errors.New("sync response: an event is not valid JSON")

// writeResponse writes resp, encoded by appendResponse into a pooled
// buffer; a response appendResponse cannot encode goes through
// json.Marshal, which fails the same way (500).
func writeResponse(w http.ResponseWriter, resp *syncResponse) error {
	bp := responseBuffers.Get().(*[]byte)
	body, err := appendResponse((*bp)[:0], resp)
	if err != nil {
		responseBuffers.Put(bp)
		return httpx.OK(w, resp)
	}
	httpx.WriteRawJSON(w, http.StatusOK, body)
	if cap(body) <= maxPooledResponse {
		*bp = body[:0]
		responseBuffers.Put(bp)
	}
	return nil
}

// responseBuffers are the buffers woken responses are encoded into.
var responseBuffers = sync.Pool{New: func() any { return new([]byte) }}

// maxPooledResponse bounds the buffers kept: a large response's buffer
// is left to the collector rather than held for the small ones.
const maxPooledResponse = 64 << 10
