package pushserver

import (
	"context"
	"encoding/json"
	"slices"
	"strings"

	"github.com/myelin-chat/myelin/roomserver"
)

// copyRulesOnUpgradeJoin copies a local user's push rules about a room's
// predecessor to the room when they join it: the room rule named after
// the old room, and override/underride rules whose conditions match the
// old room's ID. It covers an upgrade done here (the creator and each
// member who follows join the new room), a manual upgrade, and a remote
// upgrade joined over federation. Rules the user already has for the new
// room are left alone, so a repeated run (after a crash) changes nothing.
// Spec: client-server-api, "Room Upgrades", server behaviour: "When a
// user joins the new room, the server should automatically
// transfer/replicate some of the user's personalized settings such as
// notifications".
func (s *Server) copyRulesOnUpgradeJoin(ctx context.Context, ev *roomserver.Event) error {
	if ev.Type != "m.room.member" || ev.StateKey == nil || ev.Membership != "join" || !s.isLocal(*ev.StateKey) {
		return nil
	}
	create, err := s.rooms.IndexedCurrentState(ctx, ev.RoomID, []string{"m.room.create"}, true)
	if err != nil || len(create) == 0 {
		return err
	}
	var content struct {
		Predecessor *struct {
			RoomID string `json:"room_id"`
		} `json:"predecessor"`
	}
	if json.Unmarshal(create[0].Content, &content) != nil || content.Predecessor == nil || content.Predecessor.RoomID == "" {
		return nil
	}
	oldRoom, newRoom, userID := content.Predecessor.RoomID, ev.RoomID, *ev.StateKey
	u, err := loadUserRules(ctx, s.db.Reader(), userID, s.cfg.ThreadSubscriptionRules)
	if err != nil || !mentionsRoom(u, oldRoom) {
		return err
	}
	return s.updateRules(ctx, userID, func(u *userRules) error {
		copyRoomRules(u, oldRoom, newRoom)
		return nil
	})
}

// roomCondition is an event_match condition on room_id.
type roomCondition struct {
	Kind    string `json:"kind"`
	Key     string `json:"key"`
	Pattern string `json:"pattern"`
}

func isRoomCondition(c json.RawMessage, roomID string) bool {
	var rc roomCondition
	return json.Unmarshal(c, &rc) == nil && rc.Kind == "event_match" && rc.Key == "room_id" && rc.Pattern == roomID
}

// mentionsRoom reports whether any of the user's rules is about roomID.
func mentionsRoom(u *userRules, roomID string) bool {
	if u.Rules.find("room", roomID) != nil {
		return true
	}
	for _, kind := range []string{"override", "underride"} {
		for _, r := range u.Rules[kind] {
			if slices.ContainsFunc(r.Conditions, func(c json.RawMessage) bool { return isRoomCondition(c, roomID) }) {
				return true
			}
		}
	}
	return false
}

// copyRoomRules adds, for each of u's rules about oldRoom, the same rule
// about newRoom right after it, unless a rule with that ID exists.
func copyRoomRules(u *userRules, oldRoom, newRoom string) {
	if r := u.Rules.find("room", oldRoom); r != nil && u.Rules.find("room", newRoom) == nil {
		copied := *r
		copied.RuleID = newRoom
		u.Rules["room"] = insertAfter(u.Rules["room"], oldRoom, copied)
	}
	for _, kind := range []string{"override", "underride"} {
		for _, r := range slices.Clone(u.Rules[kind]) {
			if !slices.ContainsFunc(r.Conditions, func(c json.RawMessage) bool { return isRoomCondition(c, oldRoom) }) {
				continue
			}
			copied := r
			copied.RuleID = copiedRuleID(r.RuleID, newRoom)
			if u.Rules.find(kind, copied.RuleID) != nil {
				continue
			}
			copied.Conditions = make([]json.RawMessage, len(r.Conditions))
			for i, c := range r.Conditions {
				copied.Conditions[i] = c
				if isRoomCondition(c, oldRoom) {
					copied.Conditions[i], _ = json.Marshal(roomCondition{Kind: "event_match", Key: "room_id", Pattern: newRoom})
				}
			}
			u.Rules[kind] = insertAfter(u.Rules[kind], r.RuleID, copied)
		}
	}
}

// copiedRuleID names the copy of a rule for newRoom: the old ID with the
// new room appended, so the copy never clashes with the original.
func copiedRuleID(ruleID, newRoom string) string {
	id := ruleID + "-" + strings.TrimPrefix(newRoom, "!")
	if len(id) > maxRuleIDBytes {
		id = id[:maxRuleIDBytes]
	}
	return id
}

func insertAfter(rules []Rule, ruleID string, r Rule) []Rule {
	i := slices.IndexFunc(rules, func(x Rule) bool { return x.RuleID == ruleID })
	return slices.Insert(rules, i+1, r)
}
