package roomserver

import (
	"context"
	"encoding/json"

	"github.com/myelin-chat/myelin/storage"
)

// API is the roomserver's front door. Errors are *mxerr.Error for anything
// the caller did wrong (M_FORBIDDEN, M_BAD_JSON, M_TOO_LARGE, M_NOT_FOUND,
// M_UNSUPPORTED_ROOM_VERSION, ...) and plain errors for internal faults.
//
// Every method that returns events to a user takes that user's ID and
// returns only what history visibility lets them see.
type API interface {
	// CreateRoom creates a room with the spec's initial event sequence,
	// all in one transaction.
	CreateRoom(ctx context.Context, req CreateRoomRequest) (*CreateRoomResponse, error)
	// SendEvent builds, signs, auth-checks and persists a local event.
	SendEvent(ctx context.Context, req SendEventRequest) (*SendEventResponse, error)

	// Membership changes. Each is one auth-checked m.room.member event.
	Join(ctx context.Context, req MembershipRequest) (*SendEventResponse, error)
	Leave(ctx context.Context, req MembershipRequest) (*SendEventResponse, error)
	Invite(ctx context.Context, req MembershipRequest) (*SendEventResponse, error)
	Kick(ctx context.Context, req MembershipRequest) (*SendEventResponse, error)
	Ban(ctx context.Context, req MembershipRequest) (*SendEventResponse, error)
	Unban(ctx context.Context, req MembershipRequest) (*SendEventResponse, error)
	Knock(ctx context.Context, req MembershipRequest) (*SendEventResponse, error)
	// Forget hides a room the user has left from RoomsForUser; 400
	// M_UNKNOWN while the user is joined, invited or knocking (also by a
	// pending invite or knock on a room only other servers hold).
	Forget(ctx context.Context, userID, roomID string) error
	// UnforgetInTx clears a forgotten mark inside tx, the caller's
	// transaction (on the same database) that stores a new invite or
	// knock on a room only other servers hold (Spec: client-server-api,
	// "Leaving rooms").
	UnforgetInTx(ctx context.Context, tx storage.Tx, userID, roomID string) error

	// InputEvent persists an event built elsewhere (federation), running
	// the full checks: auth events, state before the event, current state
	// (soft failure). Signatures and hashes must already be verified.
	InputEvent(ctx context.Context, req InputEventRequest) (*InputEventResponse, error)

	// Reads.
	Event(ctx context.Context, userID, eventID string) (*Event, error)
	CurrentState(ctx context.Context, userID, roomID string) ([]*Event, error)
	CurrentStateEvent(ctx context.Context, userID, roomID, eventType, stateKey string) (*Event, error)
	StateAt(ctx context.Context, userID, eventID string) (*StateAtEvent, error)
	Membership(ctx context.Context, roomID, userID string) (string, error)
	JoinedRooms(ctx context.Context, userID string) ([]string, error)
	RoomsForUser(ctx context.Context, userID, membership string) ([]string, error)
	Members(ctx context.Context, userID, roomID string, membership string) ([]*Event, error)
	// AwaitFullState returns once the room no longer has partial state
	// (a partial-state join's resync finished); see partial_state.go.
	AwaitFullState(ctx context.Context, roomID string) error
	EventsInRange(ctx context.Context, req RangeRequest) (*RangeResponse, error)
	Messages(ctx context.Context, req MessagesRequest) (*MessagesResponse, error)
	CanSee(ctx context.Context, userID, eventID string) (bool, error)
	RoomVersion(ctx context.Context, roomID string) (string, error)
	StreamPosition(ctx context.Context) (int64, error)
}

// Stream is the name under which Deps.Notify is told the room event
// stream advanced.
const Stream = "room_events"

// TxnID identifies a client transaction: a retry with the same device and
// txnId gets the first attempt's event back.
// Spec: client-server-api, "Transaction identifiers".
type TxnID struct {
	DeviceID string
	TxnID    string
}

// SendEventRequest asks for a local event to be sent.
type SendEventRequest struct {
	RoomID string
	Sender string
	Type   string
	// StateKey is nil for a message event.
	StateKey *string
	Content  json.RawMessage
	// Redacts is the target of an m.room.redaction. It goes where the
	// room version puts it (top level before v11, content from v11).
	Redacts string
	TxnID   *TxnID
	// OriginServerTS, when non-zero, is the event's origin_server_ts in
	// place of now: application services' timestamp massaging.
	// Spec: application-service-api, "Timestamp massaging".
	OriginServerTS int64
}

// SendEventResponse names the event sent.
type SendEventResponse struct {
	EventID   string
	StreamPos int64
}

// MembershipRequest asks for a membership change of Target by Sender.
// For Join, Leave and Knock, Target is ignored (it is Sender).
type MembershipRequest struct {
	RoomID string
	Sender string
	Target string
	Reason string
	// IsDirect marks an invite as a direct chat (Invite only).
	IsDirect bool
	// Content is merged into the member event content (e.g. displayname,
	// avatar_url); membership-controlling keys are overwritten.
	Content map[string]any
	TxnID   *TxnID
	// ThirdPartyInvite, for an invite only, is the content's
	// third_party_invite object ({display_name, signed}) completing a
	// third-party invite; the auth rules check it against the room's
	// m.room.third_party_invite. Only the federation API sets it (from an
	// identity server's onbind or another server's exchange request).
	ThirdPartyInvite json.RawMessage
}

// CreateRoomRequest mirrors POST /createRoom.
// Spec: client-server-api, "Creation".
type CreateRoomRequest struct {
	Creator     string
	RoomVersion string // empty: Config.DefaultRoomVersion
	Preset      string // private_chat, public_chat, trusted_private_chat; empty: by Visibility
	Visibility  string // public or private
	// RoomAliasName is the alias local part; the full alias becomes the
	// canonical alias. Claiming it in the directory is the caller's job,
	// done in ReserveAlias before any event is written.
	RoomAliasName string
	Name          string
	Topic         string
	Invite        []string
	// RemoteInvites are invitees on other servers. They count as Invite
	// does for the power levels and creators of the trusted_private_chat
	// preset, but their invite events are not built here: an invite to
	// another server's user must be signed by that server first (invite
	// v2), which the caller does once the room exists.
	RemoteInvites             []string
	IsDirect                  bool
	CreationContent           map[string]any
	InitialState              []StateEvent
	PowerLevelContentOverride map[string]any
	// CreatorMemberContent is merged into the creator's join event
	// (displayname, avatar_url).
	CreatorMemberContent map[string]any
	// ReserveAlias, if set, is called with the full alias and room ID
	// before anything is written; an error aborts the creation.
	ReserveAlias func(ctx context.Context, alias, roomID string) error
}

// StateEvent is one entry of initial_state.
type StateEvent struct {
	Type     string          `json:"type"`
	StateKey string          `json:"state_key"`
	Content  json.RawMessage `json:"content"`
}

// CreateRoomResponse names the new room.
type CreateRoomResponse struct {
	RoomID string
	Alias  string
	// EventIDs of the initial events, in order.
	EventIDs []string
}

// InputEventRequest carries a federation-format event.
type InputEventRequest struct {
	RoomVersion string
	JSON        json.RawMessage
	// Delivered marks an event of this server that a resident server
	// already took through send_join or send_knock (a local user's
	// membership in a room held here with partial state): that server
	// sends it to the rest of the room, so this server's federation
	// sender leaves it out (LocalEventsAfter).
	Delivered bool
}

// InputOutcome says what became of an input event.
type InputOutcome string

const (
	Accepted   InputOutcome = "accepted"
	Rejected   InputOutcome = "rejected"    // failed auth: stored, never in state or timeline
	SoftFailed InputOutcome = "soft_failed" // passed at its own state, not at current state
	Duplicate  InputOutcome = "duplicate"   // already known
)

// InputEventResponse reports the outcome.
type InputEventResponse struct {
	EventID   string
	Outcome   InputOutcome
	Reason    string // why rejected or soft-failed
	StreamPos int64  // 0 unless accepted
}

// Event is a room event as stored. JSON is the federation format (the
// redacted copy once redacted). Content and JSON may share memory with the
// roomserver's event cache and with other callers' Events: read them, never
// write into them (append to a copy, or build new bytes).
type Event struct {
	EventID        string
	RoomID         string
	Type           string
	StateKey       *string
	Sender         string
	OriginServerTS int64
	Depth          int64
	StreamPos      int64
	Content        json.RawMessage
	Redacts        string
	Membership     string
	// RedactedBecause is the ID of the redaction applied, if any.
	RedactedBecause string
	JSON            json.RawMessage
}

// StateAtEvent is the room state before and after an event.
type StateAtEvent struct {
	Before []*Event
	After  []*Event
}

// RangeRequest reads the event stream (from, to], for sync.
type RangeRequest struct {
	UserID string
	// RoomIDs restricts the read; empty means the rooms UserID is or was in.
	RoomIDs []string
	From    int64
	To      int64 // 0: no upper bound
	Limit   int
}

// RangeResponse holds the visible events in stream order and the position
// read up to (so a caller advances even when everything was filtered out).
type RangeResponse struct {
	Events []*Event
	End    int64
}

// Direction of pagination.
type Direction string

const (
	Backward Direction = "b"
	Forward  Direction = "f"
)

// MessagesRequest mirrors GET /rooms/{roomId}/messages.
type MessagesRequest struct {
	UserID string
	RoomID string
	// From is a token from a previous response, TopologicalToken or
	// StreamToken; empty
	// means the end of the room (Backward) or its start (Forward).
	From  string
	Dir   Direction
	Limit int
}

// MessagesResponse is one page. End is always set (security case 22).
type MessagesResponse struct {
	Events []*Event
	Start  string
	End    string
}
