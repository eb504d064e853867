package syncapi

import (
	"context"
	"testing"
)

// A token reads back as written, with positions past 99 (which strconv
// does not keep preformatted) in every field; tokens from older releases
// (fewer fields) read their missing positions as 0; anything String could
// not have written is refused.
func TestSyncTokenRoundTrip(t *testing.T) {
	tok := syncToken{Room: 1234567, AccountData: 0, Receipts: 100, Typing: 99, Presence: 1 << 40,
		ToDevice: 7, DeviceLists: 9223372036854775807, RemoteInvites: 31337, Unread: 1234560}
	s := tok.String()
	if want := "s1234567_0_100_99_1099511627776_7_9223372036854775807_31337_1234560"; s != want {
		t.Fatalf("String() = %q, want %q", s, want)
	}
	got, err := parseSyncToken(s)
	if err != nil || got != tok {
		t.Fatalf("parseSyncToken(%q) = %+v, %v; want %+v", s, got, err, tok)
	}
	if got, err := parseSyncToken("s5_6"); err != nil || got != (syncToken{Room: 5, AccountData: 6}) {
		t.Errorf("an older two-field token: %+v, %v", got, err)
	}
	for _, bad := range []string{
		"", "s", "s5", "5_6", "t5_6", "s5_", "s_5", "s5__6", "s05_6", "s5_06", "s+5_6", "s-5_6", "s-0_6",
		"s5_6_", "s 5_6", "s5_6 ", "s5_0x6", "s9223372036854775808_1", "s1_2_3_4_5_6_7_8_9_10",
		"s5\x00_6", "s" + string(make([]byte, 201)),
	} {
		if got, err := parseSyncToken(bad); err == nil {
			t.Errorf("parseSyncToken(%q) = %+v, want an error", bad, got)
		}
	}
}

// Every response writes its token and every incremental request reads
// one: String allocates only its result, parseSyncToken nothing.
func TestSyncTokenAllocations(t *testing.T) {
	tok := syncToken{Room: 1234567, AccountData: 345, Receipts: 100, Typing: 999, Presence: 12345,
		ToDevice: 700, DeviceLists: 800, RemoteInvites: 900, Unread: 1234560}
	s := tok.String()
	if n := testing.AllocsPerRun(100, func() { _ = tok.String() }); n != 1 {
		t.Errorf("String: %v allocations, want 1 (the string)", n)
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = parseSyncToken(s) }); n != 0 {
		t.Errorf("parseSyncToken: %v allocations, want 0", n)
	}
}

// Spec: client-server-api, "Filtering": '*' matches any sequence of
// characters, including none.
func TestMatchType(t *testing.T) {
	for _, c := range []struct {
		pattern, typ string
		want         bool
	}{
		{"m.room.message", "m.room.message", true},
		{"m.room.message", "m.room.messages", false},
		{"*", "", true},
		{"*", "m.presence", true},
		{"m.*", "m.room.member", true},
		{"m.*", "org.m.x", false},
		{"*.member", "m.room.member", true},
		{"*.member", "m.room.members", false},
		{"m.*.member", "m.room.member", true},
		{"m.*.member", "m.member", false},
		{"m.*.*", "m.room.x", true},
		{"m.*.*", "m.room", false},
		{"a*b*c", "abc", true},
		{"a*b*c", "axxbyyc", true},
		{"a*b*c", "acb", false},
		{"ab*b", "ab", false},
		{"ab*b", "abb", true},
		{"**", "x", true},
		{"a**", "a", true},
	} {
		if got := matchType(c.pattern, c.typ); got != c.want {
			t.Errorf("matchType(%q, %q) = %v, want %v", c.pattern, c.typ, got, c.want)
		}
	}
	// Filters are checked for every event of every response.
	if n := testing.AllocsPerRun(100, func() { _ = matchType("m.*.member*", "m.room.member") }); n != 0 {
		t.Errorf("matchType with wildcards: %v allocations, want 0", n)
	}
}

// A long poll with a stored filter ID finds its filter without
// allocating a key.
func TestFilterCacheHitAllocations(t *testing.T) {
	c := newFilterCache(&countingFilters{}, 10)
	ctx := context.Background()
	if _, err := c.Filter(ctx, "@alice:x", "1"); err != nil {
		t.Fatal(err)
	}
	user, id := "@alice:x", "1"
	if n := testing.AllocsPerRun(100, func() { _, _ = c.Filter(ctx, user, id) }); n != 0 {
		t.Errorf("a cached filter: %v allocations, want 0", n)
	}
}
