package federationapi

import (
	"context"
	"encoding/json"
	"time"

	"github.com/myelin-chat/myelin/roomserver"
)

// Joiner joins local users to rooms on other servers. clientapi calls it
// when POST /join/{roomIdOrAlias} names a room this server is not in, or
// one it holds with partial state (a resident server must authorise the
// join; the join is then stored as an event of the room held here).
type Joiner interface {
	// JoinRemote joins userID (local) to roomIDOrAlias through the via
	// servers (for an alias, its server is asked and its answer's servers
	// are used). It returns the room ID once the join is persisted here.
	// Errors are *mxerr.Error fit for the client (never a 401).
	JoinRemote(ctx context.Context, roomIDOrAlias, userID string, via []string) (string, error)
}

// RemoteMemberships sends membership changes that only another server
// can take. (Leaving a room this server holds goes through the
// roomserver; the sender delivers the leave.)
type RemoteMemberships interface {
	// LeaveRemote leaves (or rejects an invite to) a room this server
	// does not hold, through make_leave/send_leave on via servers.
	LeaveRemote(ctx context.Context, roomID, userID string, via []string) error
	// InviteRemote invites a user of another server to a room held here:
	// the invite goes to the invitee's server (invite v2), and the copy it
	// signed is persisted (and sent to the room's other servers).
	InviteRemote(ctx context.Context, req roomserver.MembershipRequest) (string, error)
}

// EDUQueue lets other components send EDUs (typing, receipts, presence,
// to-device, device-list updates) to other servers. Delivery is
// persistent: an EDU queued is retried until the destination
// acknowledges it.
type EDUQueue interface {
	QueueEDU(ctx context.Context, destinations []string, eduType string, content any) error
}

// Rooms is what the federation API needs from the roomserver.
type Rooms interface {
	roomserver.API
	CheckServerAccess(ctx context.Context, server, roomID string) error
	ServerInRoom(ctx context.Context, server, roomID string) (bool, error)
	JoinedServers(ctx context.Context, roomID string) ([]string, error)
	JoinedServersInState(ctx context.Context, roomID string) ([]string, error)
	ServersJoinedSince(ctx context.Context, roomID, eventID string) ([]string, error)
	JoinedUsers(ctx context.Context, roomID string) ([]string, error)
	FederationEvent(ctx context.Context, eventID string) (*roomserver.Event, string, error)
	EventForServer(ctx context.Context, server, eventID string) (*roomserver.Event, error)
	StateForServer(ctx context.Context, server, roomID, eventID string) (state, authChain []*roomserver.Event, err error)
	EventAuthForServer(ctx context.Context, server, roomID, eventID string) ([]*roomserver.Event, error)
	BackfillForServer(ctx context.Context, server, roomID string, from []string, limit int) ([]*roomserver.Event, error)
	MissingEventsForServer(ctx context.Context, server, roomID string, earliest, latest []string, limit int, minDepth int64) ([]*roomserver.Event, error)
	EventNearTimestamp(ctx context.Context, server, roomID string, ts int64, dir roomserver.Direction) (*roomserver.Event, error)
	RoomStateEvent(ctx context.Context, roomID, eventType, stateKey string) (*roomserver.Event, error)
	Extremities(ctx context.Context, roomID string) ([]string, error)
	LocalEventsAfter(ctx context.Context, pos int64, limit int) ([]*roomserver.OutboundEvent, int64, error)
	EventsByPosition(ctx context.Context, positions []int64) ([]json.RawMessage, error)
	MembershipTemplate(ctx context.Context, req roomserver.TemplateRequest) (string, json.RawMessage, error)
	StateAndAuthChainBefore(ctx context.Context, eventID string) (state, authChain []*roomserver.Event, err error)
	PartialStateAndAuthChainBefore(ctx context.Context, eventID string) (*roomserver.PartialSendJoinResponse, error)
	ImportJoinedRoom(ctx context.Context, req roomserver.ImportRoomRequest) (*roomserver.InputEventResponse, error)
	PartialStateRooms(ctx context.Context) ([]roomserver.PartialStateRoom, error)
	IsPartialState(ctx context.Context, roomID string) (bool, error)
	AddPartialStateServers(ctx context.Context, roomID string, servers []string) error
	CompletePartialState(ctx context.Context, req roomserver.CompletePartialStateRequest) error
	PurgePartialState(ctx context.Context, roomID string, sentThrough int64) (bool, error)
	DueStretchRefetches(ctx context.Context, limit int) ([]roomserver.StretchRefetch, error)
	NextStretchRefetch(ctx context.Context) (time.Time, error)
	CompleteStretchState(ctx context.Context, req roomserver.StretchStateRequest) error
	StretchRefetchFailed(ctx context.Context, eventID string, cause error) error
	Leave(ctx context.Context, req roomserver.MembershipRequest) (*roomserver.SendEventResponse, error)
	UnknownEvents(ctx context.Context, ids []string) ([]string, error)
	UnconnectedEvents(ctx context.Context, ids []string) ([]string, error)
	InputOutliers(ctx context.Context, roomID string, events []json.RawMessage) (map[string]roomserver.InputOutcome, error)
	BuildRemoteInvite(ctx context.Context, req roomserver.MembershipRequest) (*roomserver.RemoteInvite, error)
	InputWithState(ctx context.Context, req roomserver.InputWithStateRequest) (*roomserver.InputEventResponse, error)
	PersistRemoteInvite(ctx context.Context, invite *roomserver.RemoteInvite, signed json.RawMessage) (*roomserver.SendEventResponse, error)
	// MSC2836 threading (relationships.go).
	EventRelationships(ctx context.Context, q roomserver.RelationshipsQuery) (*roomserver.RelationshipsResponse, error)
	RecordRemoteChildren(ctx context.Context, eventID string, sum roomserver.ChildrenSummary) error
	AuthChain(ctx context.Context, eventIDs []string) ([]*roomserver.Event, error)
}

var _ Rooms = (*roomserver.Server)(nil)

// Profiles answers GET /query/profile for local users (clientapi.Server).
type Profiles interface {
	// Profile returns the user's profile fields; M_NOT_FOUND if no such user.
	Profile(ctx context.Context, userID string) (map[string]json.RawMessage, error)
}

// Aliases resolves local room aliases for GET /query/directory (the
// room directory lives in clientapi).
type Aliases interface {
	// ResolveAlias returns the room of a local alias; M_NOT_FOUND if none.
	ResolveAlias(ctx context.Context, alias string) (roomID string, err error)
}

// PublicRoomDirectory lists published rooms for GET/POST /publicRooms.
type PublicRoomDirectory interface {
	// PublicRooms returns the spec's PublicRoomsResponse body: the
	// server's own list, with the rooms application services published
	// for their networks if includeAllNetworks, or only those of one
	// network instance if thirdPartyInstanceID is set (an error for an
	// unknown one, and for both set).
	PublicRooms(ctx context.Context, limit int, since, filter string, includeAllNetworks bool, thirdPartyInstanceID string) (json.RawMessage, error)
}

// Inbound EDUs go to these sinks, each only after the federation API has
// checked that the user it concerns belongs to the origin server
// (security case 15). A nil sink drops the EDU (logged at debug).
type EDUSinks struct {
	Typing      TypingSink
	Receipts    ReceiptSink
	Presence    PresenceSink
	ToDevice    ToDeviceSink
	DeviceLists DeviceListSink
}

// TypingSink takes m.typing. Spec: server-server-api, "Typing Notifications".
type TypingSink interface {
	RemoteTyping(ctx context.Context, roomID, userID string, typing bool) error
}

// ReceiptSink takes one user's receipt from an m.receipt EDU.
type ReceiptSink interface {
	RemoteReceipt(ctx context.Context, roomID, receiptType, userID string, eventIDs []string, data json.RawMessage) error
}

// PresenceSink takes one entry of an m.presence EDU.
type PresenceSink interface {
	RemotePresence(ctx context.Context, userID string, update json.RawMessage) error
}

// ToDeviceSink takes an m.direct_to_device EDU: messages[userID][deviceID]
// for local users only (the federation API drops the others).
type ToDeviceSink interface {
	RemoteToDevice(ctx context.Context, sender, eventType, messageID string, messages map[string]map[string]json.RawMessage) error
}

// DeviceListSink takes m.device_list_update and m.signing_key_update.
type DeviceListSink interface {
	RemoteDeviceListUpdate(ctx context.Context, userID string, update json.RawMessage) error
	RemoteSigningKeyUpdate(ctx context.Context, userID string, update json.RawMessage) error
	// MembersRevealed is told the remote members of a room whose
	// partial-state resync completed, and when the join happened
	// (milliseconds), so that their device-list updates of the resync's
	// time reach the local users now sharing the room.
	MembersRevealed(ctx context.Context, userIDs []string, sinceMillis int64) error
	// MembersDropped is told the remote users a room's partial state
	// held as joined whom its completed resync shows were not, so that
	// it stops tracking the device lists of those who now share no room
	// with a local user.
	MembersDropped(ctx context.Context, userIDs []string) error
}
