package syncapi

import (
	"context"
	"encoding/json"
	"sync"

	"github.com/tidwall/gjson"

	"github.com/myelin-chat/myelin/clientapi"
	"github.com/myelin-chat/myelin/roomserver"
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
// content; nil content (unset) ignores nobody. The set is only read: an
// empty one is nil, which costs nothing (every sync of a user who
// ignores nobody has one).
func parseIgnored(content json.RawMessage) map[string]bool {
	var out map[string]bool
	gjson.GetBytes(content, "ignored_users").ForEach(func(k, _ gjson.Result) bool {
		if out == nil {
			out = map[string]bool{}
		}
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
		s.ignores.put(userID, ignoreEntry{pos: head})
		return nil, nil
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

// withoutIgnoredSenders drops the non-state events of ignored senders;
// state events stay, as the spec excepts them.
// Spec: client-server-api, "Ignoring Users", server behaviour.
func withoutIgnoredSenders(evs []*roomserver.Event, ignored map[string]bool) []*roomserver.Event {
	if len(ignored) == 0 {
		return evs
	}
	out := evs[:0:0]
	for _, e := range evs {
		if e.StateKey != nil || !ignored[e.Sender] {
			out = append(out, e)
		}
	}
	return out
}

// withoutIgnoredEphemeral takes ignored users out of a room's m.typing
// (user_ids) and m.receipt (their receipts) events: the client no longer
// receives anything they send. A receipt event left with no receipts is
// dropped; other events pass unchanged.
// Spec: client-server-api, "Ignoring Users": "the client will no longer
// receive events sent by the ignored users".
func withoutIgnoredEphemeral(evs []json.RawMessage, ignored map[string]bool) []json.RawMessage {
	if len(ignored) == 0 {
		return evs
	}
	out := evs[:0:0]
	for _, e := range evs {
		switch gjson.GetBytes(e, "type").Str {
		case "m.typing":
			var ev struct {
				Type    string `json:"type"`
				Content struct {
					UserIDs []string `json:"user_ids"`
				} `json:"content"`
			}
			if json.Unmarshal(e, &ev) != nil {
				continue
			}
			kept := []string{}
			for _, u := range ev.Content.UserIDs {
				if !ignored[u] {
					kept = append(kept, u)
				}
			}
			if len(kept) != len(ev.Content.UserIDs) {
				ev.Content.UserIDs = kept
				e, _ = json.Marshal(ev)
			}
		case "m.receipt":
			var ev struct {
				Type    string                                           `json:"type"`
				Content map[string]map[string]map[string]json.RawMessage `json:"content"`
			}
			if json.Unmarshal(e, &ev) != nil {
				continue
			}
			changed := false
			for eventID, types := range ev.Content {
				for rt, users := range types {
					for u := range users {
						if ignored[u] {
							delete(users, u)
							changed = true
						}
					}
					if len(users) == 0 {
						delete(types, rt)
					}
				}
				if len(types) == 0 {
					delete(ev.Content, eventID)
				}
			}
			if len(ev.Content) == 0 {
				continue
			}
			if changed {
				e, _ = json.Marshal(ev)
			}
		}
		out = append(out, e)
	}
	return out
}

// ignoredInAccountData reads the ignored users from a full account data
// listing (sliding sync reads all of it on every request).
func ignoredInAccountData(acct []clientapi.AccountData) map[string]bool {
	for _, a := range acct {
		if a.RoomID == "" && a.Type == ignoredUserListType {
			return parseIgnored(a.Content)
		}
	}
	return map[string]bool{}
}

// withoutIgnoredInvites drops the invites sent by ignored users from a
// sliding sync room list. Spec: client-server-api, "Ignoring Users":
// "Servers must not send room invites from ignored users to clients."
func (s *Server) withoutIgnoredInvites(ctx context.Context, userID string, cands []*candidate, ignored map[string]bool) ([]*candidate, error) {
	if len(ignored) == 0 {
		return cands, nil
	}
	out := cands[:0:0]
	for _, c := range cands {
		if c.m.Membership == "invite" {
			st, err := (&roomBuilder{s: s, req: &syncRequest{userID: userID}}).stripped(ctx, c.m.RoomID)
			if err != nil {
				return nil, err
			}
			if ignored[inviter(st, userID)] {
				continue
			}
		}
		out = append(out, c)
	}
	return out, nil
}
