package syncapi

import (
	"context"
	"encoding/json"
	"sync"

	"github.com/tidwall/gjson"

	"github.com/myelin-chat/myelin/clientapi"
)

// ignoredUserListType is the global account data listing the users a
// user ignores. Spec: client-server-api, "Ignoring Users".
const ignoredUserListType = "m.ignored_user_list"

// ignoreCache remembers each user's ignored users with the account data
// position they are known current at, so a woken /sync does not read
// its account data again: a sync whose token is at or past that
// position sees any later change among the entries it reads anyway.
// Bounded; when full it starts over, and forgotten lists are read again.
type ignoreCache struct {
	mu     sync.Mutex
	max    int
	byUser map[string]ignoreEntry // guarded by mu
}

type ignoreEntry struct {
	ignored map[string]bool
	pos     int64
}

func newIgnoreCache(max int) *ignoreCache {
	return &ignoreCache{max: max, byUser: map[string]ignoreEntry{}}
}

func (c *ignoreCache) get(userID string) (ignoreEntry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.byUser[userID]
	return e, ok
}

func (c *ignoreCache) put(userID string, e ignoreEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.byUser[userID]; !ok && len(c.byUser) >= c.max {
		c.byUser = map[string]ignoreEntry{}
	}
	if old, ok := c.byUser[userID]; !ok || old.pos <= e.pos {
		c.byUser[userID] = e
	}
}

// parseIgnored reads the ignored_users keys of m.ignored_user_list
// content; nil content (unset) ignores nobody.
func parseIgnored(content json.RawMessage) map[string]bool {
	out := map[string]bool{}
	gjson.GetBytes(content, "ignored_users").ForEach(func(k, _ gjson.Result) bool {
		out[k.String()] = true
		return true
	})
	return out
}

// ignoredUsers returns the users userID ignores as of account data
// position head. acct are userID's account data entries changed in
// (since, head] (all of them when since is 0).
func (s *Server) ignoredUsers(ctx context.Context, userID string, acct []clientapi.AccountData, since, head int64) (map[string]bool, error) {
	for _, a := range acct {
		if a.RoomID == "" && a.Type == ignoredUserListType {
			ignored := parseIgnored(a.Content)
			s.ignores.put(userID, ignoreEntry{ignored: ignored, pos: head})
			return ignored, nil
		}
	}
	if since == 0 {
		// acct holds every entry: the list is unset.
		s.ignores.put(userID, ignoreEntry{ignored: map[string]bool{}, pos: head})
		return map[string]bool{}, nil
	}
	if e, ok := s.ignores.get(userID); ok && e.pos >= since {
		return e.ignored, nil // no change in (e.pos, head], which acct covers
	}
	content, err := s.acct.GlobalAccountData(ctx, userID, ignoredUserListType)
	if err != nil {
		return nil, err
	}
	ignored := parseIgnored(content)
	// Read after head was: current at head or newer. A change after head
	// is in the next sync's acct, which replaces this.
	s.ignores.put(userID, ignoreEntry{ignored: ignored, pos: head})
	return ignored, nil
}
