package syncapi

import (
	"context"
	"encoding/json"

	"github.com/myelin-chat/myelin/clientapi"
	"github.com/myelin-chat/myelin/roomserver"
)

// Stream names the notifier hears for the streams sync reads, besides
// roomserver.Stream and clientapi.AccountDataStream. The components that
// will own these streams notify under these names.
const (
	ReceiptStream    = "receipts"
	TypingStream     = "typing"
	PresenceStream   = "presence"
	ToDeviceStream   = "to_device"
	DeviceListStream = "device_list"
	// UnreadCountsStream advances when the push component has committed
	// the notifications of the room events up to its position
	// (pushserver.CountsStream).
	UnreadCountsStream = "push_counts"
)

// Rooms is what sync reads from the roomserver (*roomserver.Server).
type Rooms interface {
	StreamPosition(ctx context.Context) (int64, error)
	UserMemberships(ctx context.Context, userID string) ([]roomserver.MembershipEntry, error)
	// ForgottenRooms covers the rooms UserMemberships cannot: those only
	// other servers hold (a remote invite or knock that ended in a leave).
	ForgottenRooms(ctx context.Context, userID string) (map[string]bool, error)
	RecentEvents(ctx context.Context, req roomserver.RecentRequest) (*roomserver.RecentResponse, error)
	IndexedCurrentState(ctx context.Context, roomID string, types []string, skipMembers bool) ([]*roomserver.Event, error)
	IndexedStateKeys(ctx context.Context, roomID, eventType string, stateKeys []string) ([]*roomserver.Event, error)
	StateDelta(ctx context.Context, roomID string, from, to int64) ([]*roomserver.Event, error)
	StateAt(ctx context.Context, userID, eventID string) (*roomserver.StateAtEvent, error)
	RoomMemberSummary(ctx context.Context, roomID string) (*roomserver.MemberSummary, error)
	StreamTouched(ctx context.Context, from, to int64, limit int) ([]roomserver.StreamTouch, error)
	RoomsWithEvents(ctx context.Context, from, to int64, limit int) (map[string]bool, bool, error)
	LatestPositions(ctx context.Context, roomIDs []string, to int64, types []string) (map[string]int64, error)
	TxnIDs(ctx context.Context, roomID, userID, deviceID string, eventIDs []string) (map[string]string, error)
	MembershipsAt(ctx context.Context, userID string, eventIDs []string) (map[string]string, error)
	PartialStateOf(ctx context.Context, roomIDs []string) (partial map[string]bool, done map[string]int64, err error)
	SenderMembershipsFromAuth(ctx context.Context, eventIDs []string) ([]*roomserver.Event, error)
	AwaitFullState(ctx context.Context, roomID string) error
	PrevStates(ctx context.Context, eventIDs []string) (map[string]*roomserver.PrevState, error)
	// Batched reads of a sync that sends many rooms whole (initial_batch.go).
	RecentEventsOfRooms(ctx context.Context, req roomserver.RecentRoomsRequest) (*roomserver.RecentRooms, error)
	CurrentStateOfRooms(ctx context.Context, roomIDs []string, skipMembers bool) (map[string][]*roomserver.Event, error)
	RoomMemberSummaries(ctx context.Context, roomIDs []string) (map[string]*roomserver.MemberSummary, error)
	TxnIDsOfEvents(ctx context.Context, userID, deviceID string, roomOf map[string]string) (map[string]string, error)
	MemberEventsOfRooms(ctx context.Context, stateKeys map[string][]string) (map[string][]*roomserver.Event, error)
}

// AccountData is what sync reads from clientapi's account data stream
// (*clientapi.Server).
type AccountData interface {
	AccountDataSince(ctx context.Context, userID string, since int64) ([]clientapi.AccountData, int64, error)
	// GlobalAccountData returns one global entry's content, nil if unset.
	GlobalAccountData(ctx context.Context, userID, dataType string) (json.RawMessage, error)
}

// AccountDataHead is implemented by an AccountData that can read its
// stream head alone (*clientapi.Server); sync then skips the account
// data read of a request whose token is at the head.
type AccountDataHead interface {
	AccountDataHead(ctx context.Context) (int64, error)
}

// Filters loads stored filters (*clientapi.Server).
type Filters interface {
	Filter(ctx context.Context, userID, filterID string) (*clientapi.Filter, error)
}

// Aggregations computes bundled aggregations (*clientapi.Server). It is
// optional: without it /sync bundles none.
type Aggregations interface {
	// BundledAggregations returns the content of unsigned.m.relations
	// by event ID, for those of evs that have any, as userID's device
	// deviceID sees them.
	// Spec: client-server-api, "Aggregations of child events".
	BundledAggregations(ctx context.Context, userID, deviceID string, evs []*roomserver.Event) (map[string]json.RawMessage, error)
	// CatchUpAggregations brings what BundledAggregations reads up to
	// the room stream's head, which BundledAggregations also does before
	// reading: an initial sync calls it beside its first reads, so that
	// catching up after a burst of sends overlaps them.
	CatchUpAggregations(ctx context.Context) error
}

// EphemeralPositions are the heads of the ephemeral streams.
type EphemeralPositions struct {
	Receipts, Typing, Presence int64
}

// Ephemeral is the source of typing notifications, read receipts and
// presence. It is optional: without it those sections are empty and
// their token slots stay 0. Its streams notify as ReceiptStream,
// TypingStream and PresenceStream.
type Ephemeral interface {
	// EphemeralHeads returns the current stream heads.
	EphemeralHeads(ctx context.Context) (EphemeralPositions, error)
	// RoomEphemeral returns, per room of roomIDs, the m.typing and
	// m.receipt events (client format, without room_id) that changed in
	// (since, to]; with since all zero, the full current typing and
	// receipt state.
	RoomEphemeral(ctx context.Context, userID string, roomIDs []string, since, to EphemeralPositions) (map[string][]json.RawMessage, error)
	// Presence returns m.presence events of users sharing a room with
	// userID that changed in (since, to].
	Presence(ctx context.Context, userID string, since, to int64) ([]json.RawMessage, error)
	// PresenceOf returns the current m.presence events (at positions up
	// to to) of those of userIDs that have a presence.
	PresenceOf(ctx context.Context, userIDs []string, to int64) ([]json.RawMessage, error)
	// SetPresence records a sync request's set_presence (online,
	// unavailable or offline).
	SetPresence(ctx context.Context, userID, presence string) error
}

// SharedTyping is implemented by an Ephemeral whose typing positions come
// from one counter shared by the processes of a split deployment, each
// applying the same changes in position order (clientapi's
// typingTracker): a token from another process may then hold a typing
// position this process has not applied yet, which is valid here too.
type SharedTyping interface {
	// TypingIssued reports whether pos has been given out by the shared
	// counter.
	TypingIssued(ctx context.Context, pos int64) (bool, error)
}

// UnreadCounts are the unread notification counts of a room or thread.
type UnreadCounts struct {
	Notifications, Highlights int
}

// RoomUnread is one room's unread counts: in total, in the main
// timeline, and per thread root.
type RoomUnread struct {
	Total, Main UnreadCounts
	Threads     map[string]UnreadCounts
}

// Push is the push component's side of sync. It is optional: without it
// unread counts are zero and an initial sync has no m.push_rules until
// the user changes a rule.
type Push interface {
	// UnreadCounts must answer with counts that include every event up
	// to roomPos and every receipt up to receiptPos, so an event and the
	// count it raised arrive in the same response. It also returns the
	// room stream position the counts include (at least roomPos unless
	// the push consumer is stuck): a caller passing roomPos 0 does not
	// wait and learns how far the counts go.
	// Spec: client-server-api, "Receiving notifications".
	UnreadCounts(ctx context.Context, userID string, roomIDs []string, roomPos, receiptPos int64) (map[string]RoomUnread, int64, error)
	// CountsPosition returns the room stream position up to which the
	// counts are committed. It advances after the event's own commit;
	// the push component then notifies UnreadCountsStream.
	CountsPosition(ctx context.Context) (int64, error)
	// PushRules returns the content of userID's m.push_rules, for an
	// initial sync when none is stored in account data yet (the user
	// never changed a rule). Spec: client-server-api, "Push Rules: Events".
	PushRules(ctx context.Context, userID string) (json.RawMessage, error)
}

// PushBatch is optional on a Push: the counts of several users in one
// read. UnreadCountsOfUsers(ctx, queries, receiptPos) answers out[i]
// exactly as UnreadCounts(ctx, queries[i].UserID, queries[i].RoomIDs, 0,
// receiptPos) would at the same moment, and the room stream position
// every answer includes. Sync's long polls woken together share such a
// read (countsBatcher).
type PushBatch interface {
	UnreadCountsOfUsers(ctx context.Context, queries []UnreadQuery, receiptPos int64) ([]map[string]RoomUnread, int64, error)
}

// UnreadQuery is one user's rooms in a PushBatch read.
type UnreadQuery struct {
	UserID  string
	RoomIDs []string
}

// ThreadSubscriptions is clientapi's MSC4306 store (*clientapi.Server).
type ThreadSubscriptions interface {
	// ThreadSubscriptionsHead returns the stream head.
	ThreadSubscriptionsHead(ctx context.Context) (int64, error)
	// ThreadSubscriptionsBetween returns userID's changes in (from, to],
	// newest first, at most limit, and whether older ones were left out.
	ThreadSubscriptionsBetween(ctx context.Context, userID string, from, to int64, limit int) ([]clientapi.ThreadSubscription, bool, error)
}

// DeviceLists is the device_lists section of a sync response.
type DeviceLists struct {
	Changed []string `json:"changed"`
	Left    []string `json:"left"`
}

// MembershipDelta is what the room stream says about who started or
// stopped sharing a room with the syncing user in a sync window; see
// membershipDelta for how it is computed.
//
//   - Joined: users who joined one of the user's rooms, and every member
//     of a room the user joined.
//   - Left: users who left (or were kicked or banned from) one of the
//     user's rooms, and every member of a room the user left. The E2EE
//     source drops those who still share another room.
type MembershipDelta struct {
	Joined []string
	Left   []string
}

// E2EE is the key server's side of sync: to-device messages, device
// list changes and key counts. It is optional: without it those fields
// are present and empty and their token slots stay 0. Its streams notify
// as ToDeviceStream and DeviceListStream.
type E2EE interface {
	// E2EEHeads returns the heads of the to-device and device-list streams.
	E2EEHeads(ctx context.Context) (toDevice, deviceLists int64, err error)
	// AckToDevice deletes the device's to-device messages at positions up
	// to upTo: the client presented a token saying it has them.
	AckToDevice(ctx context.Context, userID, deviceID string, upTo int64) error
	// ToDevice returns the device's to-device messages after since, oldest
	// first, at most limit of them, and next, the to-device position of
	// the next token: the last message returned when more may be waiting,
	// else at least to (the head read for this response).
	ToDevice(ctx context.Context, userID, deviceID string, since, to int64, limit int) (events []json.RawMessage, next int64, err error)
	// DeviceListChanges returns device_lists for userID's sync between
	// device-list positions since and to, given the window's membership
	// changes.
	DeviceListChanges(ctx context.Context, userID string, since, to int64, rooms MembershipDelta) (DeviceLists, error)
	// KeyCounts returns the device's unclaimed one-time keys per
	// algorithm, and the algorithms of its unused fallback keys.
	KeyCounts(ctx context.Context, userID, deviceID string) (otk map[string]int, unusedFallback []string, err error)
}

// E2EEBatch is optional on an E2EE: the key counts of several devices
// in one read (keyCountsBatcher).
type E2EEBatch interface {
	// KeyCountsOfDevices answers each device as KeyCounts would: out[i]
	// for devices[i].
	KeyCountsOfDevices(ctx context.Context, devices []DeviceRef) ([]DeviceKeyCounts, error)
}

// DeviceRef names one device.
type DeviceRef struct{ UserID, DeviceID string }

// DeviceKeyCounts is KeyCounts' answer for one device.
type DeviceKeyCounts struct {
	OneTimeKeys    map[string]int
	UnusedFallback []string
}
