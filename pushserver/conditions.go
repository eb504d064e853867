package pushserver

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"
)

// flatEvent is an event reduced to what conditions read: every property
// by its dot-separated path (keys escaped as the spec says), with
// objects flattened and arrays kept whole. It is built once per event
// and shared by every recipient.
// Spec: appendices, "Dot-separated property paths".
type flatEvent map[string]any

// flatten parses a client- or federation-format event. Numbers stay
// json.Number so integers compare exactly.
func flatten(eventJSON []byte) (flatEvent, error) {
	dec := json.NewDecoder(bytes.NewReader(eventJSON))
	dec.UseNumber()
	var top map[string]any
	if err := dec.Decode(&top); err != nil {
		return nil, err
	}
	out := flatEvent{}
	flattenInto(out, "", top)
	return out, nil
}

func flattenInto(out flatEvent, prefix string, obj map[string]any) {
	for k, v := range obj {
		path := escapeKey(k)
		if prefix != "" {
			path = prefix + "." + path
		}
		if child, ok := v.(map[string]any); ok {
			flattenInto(out, path, child)
			continue
		}
		out[path] = v
	}
}

// escapeKey escapes a property name for a dotted path: \ and . get a
// backslash.
func escapeKey(k string) string {
	if !strings.ContainsAny(k, `.\`) {
		return k
	}
	var b strings.Builder
	for _, r := range k {
		if r == '.' || r == '\\' {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// normaliseKey rewrites a condition's key so it matches flatEvent's
// escaping: an escape other than \. or \\ is a literal backslash
// followed by the character (spec: "Other escape sequences are left
// as-is"), which flatEvent spells \\x.
func normaliseKey(key string) string {
	if !strings.Contains(key, `\`) {
		return key
	}
	var b strings.Builder
	for i := 0; i < len(key); i++ {
		c := key[i]
		if c != '\\' {
			b.WriteByte(c)
			continue
		}
		if i+1 < len(key) && (key[i+1] == '.' || key[i+1] == '\\') {
			b.WriteByte('\\')
			b.WriteByte(key[i+1])
			i++
			continue
		}
		b.WriteString(`\\`)
	}
	return b.String()
}

// evalContext is what conditions read beyond the event: per event (the
// room's member count and power levels) and per recipient (their
// display name).
type evalContext struct {
	event       flatEvent
	memberCount int
	// senderPower is the sender's power level; notificationPower gives
	// the level required per notifications key (power_levels
	// "notifications", default 50 each).
	senderPower       int64
	notificationPower func(key string) int64
	// displayName is the recipient's display name in the room, or "".
	displayName string
	// threadSubscribed reports whether the recipient is subscribed to the
	// event's thread; nil when the event is not in a thread.
	threadSubscribed func() bool
}

// condition is a compiled push condition.
type condition func(c *evalContext) bool

// never is an unrecognised or malformed condition: it never matches,
// which disables its rule. Spec: "Unrecognised conditions MUST NOT
// match any events".
func never(*evalContext) bool { return false }

// compileCondition turns one condition's JSON into a matcher.
// Spec: client-server-api, "Conditions".
func compileCondition(data json.RawMessage) condition {
	var c struct {
		Kind    string          `json:"kind"`
		Key     *string         `json:"key"`
		Pattern *string         `json:"pattern"`
		Value   json.RawMessage `json:"value"`
		Is      *string         `json:"is"`
		// Subscribed is MSC4306's thread_subscription argument.
		Subscribed *bool `json:"subscribed"`
	}
	if json.Unmarshal(data, &c) != nil {
		return never
	}
	switch c.Kind {
	case "event_match":
		if c.Key == nil || c.Pattern == nil {
			return never
		}
		key := normaliseKey(*c.Key)
		match := compileGlob(*c.Pattern, key == "content.body")
		return func(ec *evalContext) bool {
			s, ok := ec.event[key].(string)
			return ok && match(s)
		}
	case "event_property_is":
		want, ok := scalar(c.Value)
		if c.Key == nil || !ok {
			return never
		}
		key := normaliseKey(*c.Key)
		return func(ec *evalContext) bool {
			v, present := ec.event[key]
			return present && scalarEqual(v, want)
		}
	case "event_property_contains":
		want, ok := scalar(c.Value)
		if c.Key == nil || !ok {
			return never
		}
		key := normaliseKey(*c.Key)
		return func(ec *evalContext) bool {
			arr, isArray := ec.event[key].([]any)
			if !isArray {
				return false
			}
			for _, v := range arr {
				if scalarEqual(v, want) {
					return true
				}
			}
			return false
		}
	case "contains_display_name":
		return func(ec *evalContext) bool {
			body, ok := ec.event["content.body"].(string)
			return ok && ec.displayName != "" && containsWord(body, ec.displayName)
		}
	case "room_member_count":
		if c.Is == nil {
			return never
		}
		cmp, ok := parseMemberCount(*c.Is)
		if !ok {
			return never
		}
		return func(ec *evalContext) bool { return cmp(ec.memberCount) }
	case "io.element.msc4306.thread_subscription":
		// Spec: MSC4306, "New Push Rules": true only for an event in a
		// thread, when the user's subscription state equals subscribed.
		if c.Subscribed == nil {
			return never
		}
		want := *c.Subscribed
		return func(ec *evalContext) bool {
			return ec.threadSubscribed != nil && ec.threadSubscribed() == want
		}
	case "sender_notification_permission":
		if c.Key == nil {
			return never
		}
		key := *c.Key
		return func(ec *evalContext) bool {
			return ec.notificationPower != nil && ec.senderPower >= ec.notificationPower(key)
		}
	}
	return never
}

// scalar decodes a condition value: a string, an integer in the
// canonical JSON range, a boolean or null. Anything else never matches.
func scalar(data json.RawMessage) (any, bool) {
	if len(data) == 0 {
		return nil, false
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if dec.Decode(&v) != nil {
		return nil, false
	}
	switch x := v.(type) {
	case string, bool, nil:
		return x, true
	case json.Number:
		n, ok := canonicalInt(x)
		return n, ok
	}
	return nil, false
}

const maxCanonicalInt = 1<<53 - 1

func canonicalInt(n json.Number) (int64, bool) {
	i, err := strconv.ParseInt(string(n), 10, 64)
	if err != nil || i > maxCanonicalInt || i < -maxCanonicalInt {
		return 0, false
	}
	return i, true
}

// scalarEqual compares an event value with a condition value exactly:
// no type casts, integers by value.
func scalarEqual(eventValue, want any) bool {
	switch w := want.(type) {
	case string:
		s, ok := eventValue.(string)
		return ok && s == w
	case bool:
		b, ok := eventValue.(bool)
		return ok && b == w
	case nil:
		return eventValue == nil
	case int64:
		n, ok := eventValue.(json.Number)
		if !ok {
			return false
		}
		i, ok := canonicalInt(n)
		return ok && i == w
	}
	return false
}

// compileGlob builds a case-insensitive matcher for a glob (* any run,
// ? one character). For content.body the pattern may match any
// substring that starts and ends at a word boundary; otherwise it must
// match the whole value. Patterns without wildcards skip the regexp.
// Spec: client-server-api, "Conditions", event_match; appendices,
// "Glob-style matching".
func compileGlob(pattern string, words bool) func(string) bool {
	if !strings.ContainsAny(pattern, "*?") {
		if words {
			return func(s string) bool { return containsWord(s, pattern) }
		}
		return func(s string) bool { return strings.EqualFold(s, pattern) }
	}
	var b strings.Builder
	b.WriteString(`(?is)`)
	if words {
		b.WriteString(`(?:^|[^a-z0-9_])`)
	} else {
		b.WriteString(`^`)
	}
	for _, r := range pattern {
		switch r {
		case '*':
			b.WriteString(`.*?`)
		case '?':
			b.WriteString(`.`)
		default:
			b.WriteString(regexp.QuoteMeta(string(r)))
		}
	}
	if words {
		b.WriteString(`(?:[^a-z0-9_]|$)`)
	} else {
		b.WriteString(`$`)
	}
	re, err := regexp.Compile(b.String())
	if err != nil {
		return func(string) bool { return false }
	}
	return re.MatchString
}

// containsWord reports whether word occurs in s, case-insensitively,
// starting and ending at word boundaries (the start or end of s, or a
// character outside [A-Za-z0-9_]).
func containsWord(s, word string) bool {
	if word == "" {
		return false
	}
	ls, lw := strings.ToLower(s), strings.ToLower(word)
	for from := 0; from <= len(ls)-len(lw); {
		i := strings.Index(ls[from:], lw)
		if i < 0 {
			return false
		}
		start, end := from+i, from+i+len(lw)
		if boundaryBefore(ls, start) && boundaryAfter(ls, end) {
			return true
		}
		_, size := utf8.DecodeRuneInString(ls[start:])
		from = start + size
	}
	return false
}

func isWordByte(c byte) bool {
	return c == '_' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}

func boundaryBefore(s string, i int) bool { return i == 0 || !isWordByte(s[i-1]) }
func boundaryAfter(s string, i int) bool  { return i == len(s) || !isWordByte(s[i]) }

// parseMemberCount reads a room_member_count "is": an integer with an
// optional ==, <, >, <= or >= prefix (== by default).
func parseMemberCount(is string) (func(int) bool, bool) {
	op := ""
	for _, p := range []string{"==", "<=", ">=", "<", ">"} {
		if strings.HasPrefix(is, p) {
			op, is = p, is[len(p):]
			break
		}
	}
	n, err := strconv.Atoi(is)
	if err != nil {
		return nil, false
	}
	switch op {
	case "<":
		return func(c int) bool { return c < n }, true
	case ">":
		return func(c int) bool { return c > n }, true
	case "<=":
		return func(c int) bool { return c <= n }, true
	case ">=":
		return func(c int) bool { return c >= n }, true
	}
	return func(c int) bool { return c == n }, true
}
