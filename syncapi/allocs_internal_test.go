package syncapi

import (
	"context"
	"encoding/json"
	"maps"
	"testing"

	"github.com/myelin-chat/myelin/clientapi"
)

// A user who ignores nobody costs no allocation per sync for it: every
// woken /sync of a client that never set m.ignored_user_list takes this
// path (since 0: its token's account data position).
func TestIgnoredUsersNobodyAllocations(t *testing.T) {
	s := &Server{ignores: newIgnoreCache(10)}
	ctx := context.Background()
	n := testing.AllocsPerRun(100, func() {
		ignored, err := s.ignoredUsers(ctx, "@a:x", nil, 0, 7)
		if err != nil || len(ignored) != 0 {
			t.Fatalf("ignoredUsers = %v, %v; want none", ignored, err)
		}
	})
	if n != 0 {
		t.Errorf("ignoring nobody: %v allocations per sync, want 0", n)
	}
	// The list, once set, is still read.
	acct := []clientapi.AccountData{{Type: ignoredUserListType, Content: json.RawMessage(`{"ignored_users":{"@b:x":{}}}`)}}
	ignored, err := s.ignoredUsers(ctx, "@a:x", acct, 0, 8)
	if err != nil || !ignored["@b:x"] || len(ignored) != 1 {
		t.Fatalf("ignoredUsers with a list = %v, %v", ignored, err)
	}
	if e, ok := s.ignores.get("@a:x"); !ok || !e.ignored["@b:x"] || e.pos != 8 {
		t.Errorf("cache entry %+v, %v", e, ok)
	}
	if got := parseIgnored(json.RawMessage(`{"ignored_users":{}}`)); len(got) != 0 {
		t.Errorf("empty list parsed as %v", got)
	}
}

// onlyKeys keeps exactly the entries of the keys asked for; when the map
// holds nothing else (a woken timeline's memberships) it is returned as
// it is, without a copy.
func TestOnlyKeys(t *testing.T) {
	m := map[string]string{"$a": "join", "$b": "leave"}
	for _, tc := range []struct {
		keys []string
		want map[string]string
	}{
		{[]string{"$a", "$b"}, map[string]string{"$a": "join", "$b": "leave"}},
		{[]string{"$b", "$a", "$c"}, map[string]string{"$a": "join", "$b": "leave"}},
		{[]string{"$a"}, map[string]string{"$a": "join"}},
		{[]string{"$c", "$d"}, map[string]string{}},
		{nil, map[string]string{}},
	} {
		got := onlyKeys(m, tc.keys)
		if !maps.Equal(got, tc.want) {
			t.Errorf("onlyKeys(%v) = %v, want %v", tc.keys, got, tc.want)
		}
	}
	if len(m) != 2 {
		t.Fatalf("onlyKeys changed its argument: %v", m)
	}
	keys := []string{"$a", "$b"}
	var kept map[string]string
	if n := testing.AllocsPerRun(100, func() { kept = onlyKeys(m, keys) }); n != 0 {
		t.Errorf("nothing to leave out: %v allocations, want 0", n)
	}
	if !maps.Equal(kept, m) {
		t.Errorf("kept %v, want %v", kept, m)
	}
}
