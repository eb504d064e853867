package clientapi

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/roomserver"
)

// Federation is what the client API asks of other servers
// (*federationapi.Server). Its errors are fit for clients: a remote 4xx
// keeps its code, anything else is 502, never 401 (security case 32).
// Deps.Federation may be nil: rooms and users on other servers are then
// out of reach (404).
type Federation interface {
	// JoinRemote joins a local user to a room this server is not in,
	// through via (or the alias's server), and returns the room ID.
	JoinRemote(ctx context.Context, roomIDOrAlias, userID string, via []string) (string, error)
	// LeaveRemote leaves, or rejects an invite to, a room this server is
	// not in.
	LeaveRemote(ctx context.Context, roomID, userID string, via []string) error
	// PendingRemoteRooms lists the rooms only other servers hold in
	// which userID has a pending invite or knock.
	PendingRemoteRooms(ctx context.Context, userID string) ([]string, error)
	// InviteRemote invites a user of another server to a room held here,
	// through their server (invite v2), and returns the invite's event ID.
	InviteRemote(ctx context.Context, req roomserver.MembershipRequest) (string, error)
	// KnockRemote knocks on a room this server is not in, through via
	// (or the alias's server), with content (reason, profile) in the
	// knock event, and returns the room ID.
	KnockRemote(ctx context.Context, roomIDOrAlias, userID string, content map[string]any, via []string) (string, error)
	// QueueEDU queues an EDU for other servers; delivery is persistent.
	QueueEDU(ctx context.Context, destinations []string, eduType string, content any) error
	// QueryDirectory resolves an alias of another server.
	QueryDirectory(ctx context.Context, alias string) (roomID string, servers []string, err error)
	// RemotePublicRooms reads another server's published room list (the
	// spec's PublicRoomsResponse), with its network parameters.
	RemotePublicRooms(ctx context.Context, server string, limit int, since, filter string, includeAllNetworks bool, thirdPartyInstanceID string) (json.RawMessage, error)
	// RemoteHierarchy reads another server's federation space hierarchy
	// answer about roomID (the room, its children that server lets us
	// see, and the inaccessible ones).
	RemoteHierarchy(ctx context.Context, server, roomID string, suggestedOnly bool) (json.RawMessage, error)
	// QueryProfile reads a profile (or one field of it, if field is not
	// "") of a user of another server.
	QueryProfile(ctx context.Context, userID, field string) (map[string]json.RawMessage, error)
}

// joinVia reads the servers a client names to join through: via (v1.12)
// and the older server_name, both repeatable.
// Spec: client-server-api, "POST /_matrix/client/v3/join/{roomIdOrAlias}".
func joinVia(r *http.Request) []string {
	q := r.URL.Query()
	var via []string
	for _, v := range append(q["via"], q["server_name"]...) {
		if v != "" && !slices.Contains(via, v) {
			via = append(via, v)
		}
	}
	return via
}

// heldHere reports whether this server takes part in roomID: it knows
// the room and one of its users is joined. Otherwise a join must go
// through a resident server.
func (s *Server) heldHere(ctx context.Context, roomID string) (bool, error) {
	if _, err := s.rooms.rooms.RoomVersion(ctx, roomID); mxerr.Is(err, mxerr.NotFound) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	servers, err := s.rooms.rooms.JoinedServers(ctx, roomID)
	if err != nil {
		return false, err
	}
	return slices.Contains(servers, s.serverName), nil
}

// joinRemote joins over federation, or says why it cannot.
func (s *Server) joinRemote(ctx context.Context, target, userID string, via []string) (string, error) {
	if s.federation == nil {
		return "", mxerr.New(mxerr.NotFound, "%s is held by other servers and federation is off", target)
	}
	return s.federation.JoinRemote(ctx, target, userID, via)
}

// ResolveAlias answers other servers' directory queries from the alias
// table (federationapi.Aliases).
func (s *Server) ResolveAlias(ctx context.Context, alias string) (string, error) {
	roomID, _, err := s.lookupAlias(ctx, alias)
	return roomID, err
}

// PublicRooms answers other servers' /publicRooms from the published room
// directory (federationapi.PublicRoomDirectory).
func (s *Server) PublicRooms(ctx context.Context, limit int, since, filter string, includeAllNetworks bool, thirdPartyInstanceID string) (json.RawMessage, error) {
	q := &publicRoomsQuery{Since: since, IncludeAllNetworks: includeAllNetworks, ThirdPartyInstanceID: thirdPartyInstanceID}
	if limit > 0 {
		q.Limit = &limit
	}
	q.Filter.GenericSearchTerm = filter
	body, err := s.publicRoomsPage(ctx, q)
	if err != nil {
		return nil, err
	}
	return json.Marshal(body)
}

// remotePublicRooms is /publicRooms with server set to another server.
func (s *Server) remotePublicRooms(w http.ResponseWriter, r *http.Request, q *publicRoomsQuery) error {
	if s.federation == nil {
		return mxerr.New(mxerr.NotFound, "the directories of other servers are out of reach: federation is off")
	}
	limit := 0
	if q.Limit != nil {
		limit = *q.Limit
	}
	body, err := s.federation.RemotePublicRooms(r.Context(), q.Server, limit, q.Since, q.Filter.GenericSearchTerm, q.IncludeAllNetworks, q.ThirdPartyInstanceID)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	_, err = w.Write(body)
	return err
}

// remoteAlias resolves an alias of another server for
// GET /directory/room/{roomAlias}.
func (s *Server) remoteAlias(w http.ResponseWriter, r *http.Request, alias string) error {
	if s.federation == nil {
		return mxerr.New(mxerr.NotFound, "room alias %s is on another server and federation is off", alias)
	}
	roomID, servers, err := s.federation.QueryDirectory(r.Context(), alias)
	if err != nil {
		return err
	}
	if servers == nil {
		servers = []string{}
	}
	return httpx.OK(w, map[string]any{"room_id": roomID, "servers": servers})
}
