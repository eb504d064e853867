package pushserver

import (
	"context"
	"encoding/json"
)

// API is what other components ask of push.
type API interface {
	// UnreadCounts returns userID's unread notification counts for each
	// of roomIDs that has any, once the consumers have processed the
	// room event stream up to roomPos and the receipt stream up to
	// receiptPos (or a short wait has passed).
	UnreadCounts(ctx context.Context, userID string, roomIDs []string, roomPos, receiptPos int64) (map[string]RoomCounts, error)
	// RulesContent returns the content of userID's m.push_rules account
	// data: {"global": ruleset}.
	RulesContent(ctx context.Context, userID string) (json.RawMessage, error)
}

var _ API = (*Server)(nil)

// Counts are the unread counts of a room or thread.
type Counts struct {
	Notifications int
	Highlights    int
}

func (c *Counts) add(o Counts) {
	c.Notifications += o.Notifications
	c.Highlights += o.Highlights
}

// RoomCounts are one room's unread counts.
type RoomCounts struct {
	// Total counts the main timeline and every thread.
	Total Counts
	// Main counts the main timeline only.
	Main Counts
	// Threads counts each thread by its root event ID.
	Threads map[string]Counts
}

// ServerRulesType is the account data type push rules appear under.
const ServerRulesType = "m.push_rules"
