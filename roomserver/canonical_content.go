package roomserver

import (
	"bytes"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
)

// canonicalContent returns the canonical JSON of an event's content, as
// gomatrixserverlib.EnforcedCanonicalJSON does (byte for byte, errors
// included), for content of room version impl.
//
// Every local send canonicalises its content; for a client's message
// that was a tenth of the event's build outside the signature: a
// validation pass (gjson), a compaction copy, a parse into a tree and
// the range check of room versions 6+ (one more parse). Content in the
// shape clients send — compact (clientapi compacts every body), with
// strings that hold no escape, small integers, literals, and nested
// objects and arrays of the same — is canonical once its object keys
// are sorted: canonicalPlain checks and sorts it in one walk. Anything
// else (an escape, whitespace, a fraction or exponent, a long or
// negative-zero number, a repeated key, deep nesting) goes the general
// way. TestCanonicalContentMatchesLibrary and FuzzCanonicalContent
// compare the two over such inputs.
//
// Spec: appendices, "Canonical JSON" (keys sorted by code point, which
// is UTF-8 byte order; no insignificant whitespace; strings as their
// shortest form); rooms v6+, "Canonical JSON" (integers in
// [-(2**53)+1, (2**53)-1], no floats).
func canonicalContent(impl gomatrixserverlib.IRoomVersion, content []byte) ([]byte, error) {
	if out, ok := canonicalPlain(content); ok {
		return out, nil
	}
	return gomatrixserverlib.EnforcedCanonicalJSON(content, impl.Version())
}

// maxPlainDepth bounds the nesting canonicalPlain walks (deeper content
// goes the general way; the walk recurses).
const maxPlainDepth = 16

// maxPlainDigits bounds the integers canonicalPlain takes: every integer
// of up to 15 digits lies inside rooms v6+'s range (2**53-1 has 16).
const maxPlainDigits = 15

// canonicalPlain returns the canonical form of src, a JSON object, in a
// new slice, when src is plain (see canonicalContent); ok is false
// otherwise, and for anything that is not valid JSON.
func canonicalPlain(src []byte) (out []byte, ok bool) {
	if len(src) == 0 || src[0] != '{' {
		return nil, false
	}
	end, ok := scanPlain(src, 0, 0)
	if !ok || end != len(src) {
		return nil, false
	}
	out, _, ok = appendPlain(make([]byte, 0, len(src)), src, 0)
	if !ok {
		return nil, false
	}
	return out, true
}

// scanPlain checks the plain value starting at src[i] and returns the
// index just after it.
func scanPlain(src []byte, i, depth int) (int, bool) {
	if i >= len(src) {
		return 0, false
	}
	switch c := src[i]; {
	case c == '"':
		return scanPlainString(src, i)
	case c == '-' || c >= '0' && c <= '9':
		return scanPlainInt(src, i)
	case c == 't':
		return scanLiteral(src, i, "true")
	case c == 'f':
		return scanLiteral(src, i, "false")
	case c == 'n':
		return scanLiteral(src, i, "null")
	case c == '{' || c == '[':
		if depth >= maxPlainDepth {
			return 0, false
		}
		closer := byte('}')
		if c == '[' {
			closer = ']'
		}
		i++
		if i < len(src) && src[i] == closer {
			return i + 1, true
		}
		for {
			var ok bool
			if c == '{' {
				if i, ok = scanPlainString(src, i); !ok || i >= len(src) || src[i] != ':' {
					return 0, false
				}
				i++
			}
			if i, ok = scanPlain(src, i, depth+1); !ok || i >= len(src) {
				return 0, false
			}
			switch src[i] {
			case ',':
				i++
			case closer:
				return i + 1, true
			default:
				return 0, false
			}
		}
	}
	return 0, false
}

// scanPlainString checks the string starting at src[i]: no escape and no
// control character (which JSON does not allow unescaped). Its bytes are
// then its canonical form, whatever they are otherwise, as they are for
// gomatrixserverlib.
func scanPlainString(src []byte, i int) (int, bool) {
	if i >= len(src) || src[i] != '"' {
		return 0, false
	}
	for j := i + 1; j < len(src); j++ {
		switch c := src[j]; {
		case c == '"':
			return j + 1, true
		case c < 0x20 || c == '\\':
			return 0, false
		}
	}
	return 0, false
}

// scanPlainInt checks the integer starting at src[i]: an optional minus,
// then 0 or up to maxPlainDigits digits without a leading zero; not -0
// (room versions differ on it). A fraction or an exponent after it fails
// in the caller, which expects ',', '}' or ']' next.
func scanPlainInt(src []byte, i int) (int, bool) {
	if src[i] == '-' {
		i++
	}
	start := i
	for i < len(src) && src[i] >= '0' && src[i] <= '9' {
		i++
	}
	digits := i - start
	switch {
	case digits == 0 || digits > maxPlainDigits:
		return 0, false
	case src[start] == '0' && (digits > 1 || start > 0 && src[start-1] == '-'):
		return 0, false
	}
	return i, true
}

func scanLiteral(src []byte, i int, lit string) (int, bool) {
	if !bytes.HasPrefix(src[i:], []byte(lit)) {
		return 0, false
	}
	return i + len(lit), true
}

// plainMember is one member of an object: its key without the quotes
// and where its value starts and ends in the source.
type plainMember struct {
	key        []byte
	start, end int
}

// appendPlain appends the canonical form of the plain value at src[i]
// (scanPlain accepted it) and returns the index after it; ok is false
// when an object repeats a key.
func appendPlain(dst, src []byte, i int) ([]byte, int, bool) {
	switch src[i] {
	case '[':
		dst = append(dst, '[')
		i++
		if src[i] == ']' {
			return append(dst, ']'), i + 1, true
		}
		for {
			var ok bool
			if dst, i, ok = appendPlain(dst, src, i); !ok {
				return nil, 0, false
			}
			dst = append(dst, src[i])
			i++
			if src[i-1] == ']' {
				return dst, i, true
			}
		}
	case '{':
		var stack [8]plainMember
		members := stack[:0]
		i++
		for src[i] != '}' {
			keyEnd, _ := scanPlainString(src, i)
			start := keyEnd + 1
			end, _ := scanPlain(src, start, 0)
			members = append(members, plainMember{key: src[i+1 : keyEnd-1], start: start, end: end})
			i = end
			if src[i] == ',' {
				i++
			}
		}
		slices.SortFunc(members, func(a, b plainMember) int { return bytes.Compare(a.key, b.key) })
		dst = append(dst, '{')
		for k, m := range members {
			if k > 0 {
				if bytes.Equal(members[k-1].key, m.key) {
					return nil, 0, false
				}
				dst = append(dst, ',')
			}
			dst = append(dst, '"')
			dst = append(dst, m.key...)
			dst = append(dst, '"', ':')
			var ok bool
			if dst, _, ok = appendPlain(dst, src, m.start); !ok {
				return nil, 0, false
			}
		}
		return append(dst, '}'), i + 1, true
	}
	end, _ := scanPlain(src, i, 0)
	return append(dst, src[i:end]...), end, true
}
