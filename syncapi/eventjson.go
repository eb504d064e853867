package syncapi

import (
	"encoding/json"
	"strconv"

	"github.com/myelin-chat/myelin/internal/httpx"
)

// appendClientEvent appends the JSON encoding of ce, byte for byte what
// json.Marshal(ce) gives, without reflection: an initial sync renders
// thousands of events and the reflective encoder was a large share of
// its time (issue #6). ok is false, and nothing is appended, when a raw
// member is not valid JSON: json.Marshal then fails, and the caller
// does what it does then.
func appendClientEvent(dst []byte, ce *clientEvent) (out []byte, ok bool) {
	start := len(dst)
	fail := func() ([]byte, bool) { return dst[:start], false }
	dst = append(dst, `{"content":`...)
	if dst, ok = appendRaw(dst, ce.Content); !ok {
		return fail()
	}
	dst = append(dst, `,"event_id":`...)
	dst = httpx.AppendJSONString(dst, ce.EventID)
	dst = append(dst, `,"origin_server_ts":`...)
	dst = strconv.AppendInt(dst, ce.OriginServerTS, 10)
	dst = append(dst, `,"sender":`...)
	dst = httpx.AppendJSONString(dst, ce.Sender)
	if ce.StateKey != nil {
		dst = append(dst, `,"state_key":`...)
		dst = httpx.AppendJSONString(dst, *ce.StateKey)
	}
	dst = append(dst, `,"type":`...)
	dst = httpx.AppendJSONString(dst, ce.Type)
	if ce.Redacts != "" {
		dst = append(dst, `,"redacts":`...)
		dst = httpx.AppendJSONString(dst, ce.Redacts)
	}
	if u := ce.Unsigned; u != nil {
		dst = append(dst, `,"unsigned":{"age":`...)
		dst = strconv.AppendInt(dst, u.Age, 10)
		for _, f := range [...]struct {
			name, value string
			raw         json.RawMessage
			isRaw       bool
		}{
			{name: "transaction_id", value: u.TransactionID},
			{name: "membership", value: u.Membership},
			{name: "redacted_by", value: u.RedactedBy},
			{name: "m.relations", raw: u.Relations, isRaw: true},
			{name: "prev_content", raw: u.PrevContent, isRaw: true},
			{name: "prev_sender", value: u.PrevSender},
			{name: "replaces_state", value: u.ReplacesState},
		} {
			// omitempty: an empty string or raw value is left out.
			if f.isRaw && len(f.raw) == 0 || !f.isRaw && f.value == "" {
				continue
			}
			dst = append(dst, ',', '"')
			dst = append(dst, f.name...)
			dst = append(dst, '"', ':')
			if !f.isRaw {
				dst = httpx.AppendJSONString(dst, f.value)
			} else if dst, ok = appendRaw(dst, f.raw); !ok {
				return fail()
			}
		}
		dst = append(dst, '}')
	}
	return append(dst, '}'), true
}

// appendRaw appends raw JSON as json.Marshal does a json.RawMessage:
// compacted, with <, >, &, U+2028 and U+2029 escaped. Valid JSON without
// whitespace outside its strings and without those characters is already
// that, and is copied; anything else goes through the encoder's own
// steps. Spaces inside strings (a message's body) do not need the
// encoder: only whitespace between tokens is compacted away.
func appendRaw(dst []byte, raw json.RawMessage) ([]byte, bool) {
	if plainJSON(raw) {
		if !json.Valid(raw) {
			return dst, false
		}
		return append(dst, raw...), true
	}
	enc, err := json.Marshal(raw)
	if err != nil {
		return dst, false
	}
	return append(dst, enc...), true
}

// plainJSON reports whether raw, if it is valid JSON, is already what
// json.Marshal makes of it: no whitespace outside strings, and no <, >,
// & or byte 0xe2 (which starts U+2028 and U+2029) anywhere. Strings are
// followed by their quotes and backslash escapes; for text that is not
// valid JSON the answer does not matter (json.Valid or the encoder
// refuses it either way).
func plainJSON(raw []byte) bool {
	inString := false
	for i := 0; i < len(raw); i++ {
		switch c := raw[i]; c {
		case '<', '>', '&', 0xe2:
			return false
		case ' ', '\t', '\n', '\r':
			if !inString {
				return false
			}
		case '"':
			inString = !inString
		case '\\':
			if inString {
				i++ // the escaped byte: a quote or backslash here ends nothing
			}
		}
	}
	return true
}
