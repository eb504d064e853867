package clientapi

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
)

// Published room directory limits.
const (
	defaultPublicRoomsLimit = 100
	maxPublicRoomsLimit     = 500
)

// roomPublicRoutes registers the room endpoints that take no access token.
func (s *Server) roomPublicRoutes(r chi.Router) {
	if s.rooms.rooms == nil {
		return
	}
	const v3 = "/_matrix/client/v3"
	handle(r, http.MethodGet, v3+"/directory/room/{roomAlias}", s.getAlias)
	handle(r, http.MethodGet, v3+"/directory/list/room/{roomId}", s.getDirectoryVisibility)
	handle(r, http.MethodGet, v3+"/publicRooms", s.getPublicRooms)
	// Spec: room summaries MAY be served without an access token; one,
	// if sent, must be valid.
	optional := r.With(authn.Optional(s))
	optional.Method(http.MethodGet, "/_matrix/client/v1/room_summary/{roomIdOrAlias}", httpx.H(s.roomSummaryHandler))
	// MSC3266's unstable paths, older and newer, which clients still use.
	optional.Method(http.MethodGet, "/_matrix/client/unstable/im.nheko.summary/rooms/{roomIdOrAlias}/summary", httpx.H(s.roomSummaryHandler))
	optional.Method(http.MethodGet, "/_matrix/client/unstable/im.nheko.summary/summary/{roomIdOrAlias}", httpx.H(s.roomSummaryHandler))
}

func (s *Server) directoryRoutes(r chi.Router) {
	const v3 = "/_matrix/client/v3"
	handle(r, http.MethodPut, v3+"/directory/room/{roomAlias}", s.putAlias)
	handle(r, http.MethodDelete, v3+"/directory/room/{roomAlias}", s.deleteAliasHandler)
	handle(r, http.MethodGet, v3+"/rooms/{roomId}/aliases", s.roomAliases)
	handle(r, http.MethodPut, v3+"/directory/list/room/{roomId}", s.putDirectoryVisibility)
	handle(r, http.MethodPost, v3+"/publicRooms", s.postPublicRooms)
	handle(r, http.MethodPut, v3+"/directory/list/appservice/{networkId}/{roomId}", s.putNetworkVisibility)
}

// pathAlias reads {roomAlias} and checks its shape.
func pathAlias(r *http.Request) (string, error) {
	alias, err := unescapedParam(r, "roomAlias")
	if err != nil {
		return "", err
	}
	if !validAlias(alias) {
		return "", mxerr.New(mxerr.InvalidParam, "%q is not a valid room alias", alias)
	}
	return alias, nil
}

// getAlias resolves an alias.
// Spec: client-server-api, "GET /_matrix/client/v3/directory/room/{roomAlias}".
func (s *Server) getAlias(w http.ResponseWriter, r *http.Request) error {
	alias, err := pathAlias(r)
	if err != nil {
		return err
	}
	if domainOf(alias) != s.serverName {
		return s.remoteAlias(w, r, alias)
	}
	roomID, _, err := s.lookupAlias(r.Context(), alias)
	if mxerr.Is(err, mxerr.NotFound) && s.asQueries != nil && s.asQueries.QueryAlias(r.Context(), alias) {
		// Spec: application-service-api, "GET /_matrix/app/v1/rooms/{roomAlias}":
		// the service has created the room and alias before answering 200.
		roomID, _, err = s.lookupAlias(r.Context(), alias)
	}
	if err != nil {
		return err
	}
	// servers: this server, then the other servers in the room, which a
	// client may join through. While the room has partial state they
	// are the servers send_join named (MSC3706), as over federation
	// (GET /query/directory).
	servers := []string{s.serverName}
	inRoom, err := s.rooms.rooms.JoinedServers(r.Context(), roomID)
	if err != nil && !mxerr.Is(err, mxerr.NotFound) {
		return err
	}
	for _, server := range inRoom {
		if !slices.Contains(servers, server) {
			servers = append(servers, server)
		}
	}
	return httpx.OK(w, map[string]any{"room_id": roomID, "servers": servers})
}

// putAlias creates an alias on this server for a room it knows.
// Spec: client-server-api, "PUT /_matrix/client/v3/directory/room/{roomAlias}".
func (s *Server) putAlias(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	alias, err := pathAlias(r)
	if err != nil {
		return err
	}
	if domainOf(alias) != s.serverName {
		return mxerr.New(mxerr.InvalidParam, "room aliases can only be created on this server (%s)", s.serverName)
	}
	var body struct {
		RoomID *string `json:"room_id"`
	}
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return err
	}
	if body.RoomID == nil {
		return mxerr.New(mxerr.MissingParam, "room_id is required")
	}
	if !validRoomID(*body.RoomID) {
		return mxerr.New(mxerr.InvalidParam, "%q is not a valid room ID", *body.RoomID)
	}
	me := caller(r)
	if me.IsGuest {
		return mxerr.New(mxerr.GuestAccessForbidden, "guests cannot create room aliases")
	}
	if err := s.exclusiveAlias(alias, me.AppServiceID); err != nil {
		return err
	}
	if _, err := s.rooms.rooms.RoomVersion(ctx, *body.RoomID); err != nil {
		return err
	}
	if err := s.insertAlias(ctx, alias, *body.RoomID, me.UserID); err != nil {
		if mxerr.Is(err, mxerr.RoomInUse) {
			// Spec: 409 with M_UNKNOWN here (createRoom uses M_ROOM_IN_USE).
			return mxerr.New(mxerr.Unknown, "room alias %s already exists", alias).WithStatus(http.StatusConflict)
		}
		return err
	}
	return httpx.OK(w, httpx.EmptyObject)
}

// deleteAliasHandler removes an alias. Its creator may, and so may
// anyone in the room allowed to change m.room.canonical_alias.
// Spec: client-server-api, "DELETE /_matrix/client/v3/directory/room/{roomAlias}".
func (s *Server) deleteAliasHandler(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	alias, err := pathAlias(r)
	if err != nil {
		return err
	}
	roomID, creator, err := s.lookupAlias(ctx, alias)
	if err != nil {
		return err
	}
	me := caller(r)
	if creator != me.UserID {
		if err := s.requirePowerFor(ctx, me.UserID, roomID, "m.room.canonical_alias"); err != nil {
			return err
		}
	}
	if _, err := s.deleteAlias(ctx, alias); err != nil {
		return err
	}
	if err := s.dropFromCanonicalAlias(ctx, me.UserID, roomID, alias); err != nil {
		// The alias is gone, which is what was asked.
		s.log.Warn("updating m.room.canonical_alias after deleting an alias", "room_id", roomID, "err", err)
	}
	return httpx.OK(w, httpx.EmptyObject)
}

// requirePowerFor answers M_FORBIDDEN unless userID is joined to roomID
// with the power to send the state event type.
func (s *Server) requirePowerFor(ctx context.Context, userID, roomID, stateType string) error {
	if m, err := s.rooms.rooms.Membership(ctx, roomID, userID); err != nil {
		return err
	} else if m != "join" {
		return mxerr.New(mxerr.Forbidden, "you are not joined to room %s", roomID)
	}
	level, pl, err := s.userPower(ctx, userID, roomID)
	if err != nil {
		return err
	}
	if level < pl.stateLevel(stateType) {
		return mxerr.New(mxerr.Forbidden, "you need power level %d in %s", pl.stateLevel(stateType), roomID)
	}
	return nil
}

// roomAliases lists a room's local aliases to its members (to anyone if
// the room is world-readable).
// Spec: client-server-api, "GET /_matrix/client/v3/rooms/{roomId}/aliases".
func (s *Server) roomAliases(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	roomID, err := pathRoomID(r)
	if err != nil {
		return err
	}
	if err := s.requireJoinedOrWorldReadable(ctx, roomID, caller(r).UserID); err != nil {
		return err
	}
	aliases, err := s.aliasesOf(ctx, roomID)
	if err != nil {
		return err
	}
	return httpx.OK(w, map[string]any{"aliases": aliases})
}

// requireJoinedOrWorldReadable answers M_FORBIDDEN unless userID is
// joined to roomID or the room's history is world-readable.
func (s *Server) requireJoinedOrWorldReadable(ctx context.Context, roomID, userID string) error {
	if _, err := s.rooms.rooms.RoomVersion(ctx, roomID); err != nil {
		return err
	}
	if m, err := s.rooms.rooms.Membership(ctx, roomID, userID); err != nil || m == "join" {
		return err
	}
	summary, err := s.summarise(ctx, roomID)
	if err != nil {
		return err
	}
	if !summary.WorldReadable {
		return mxerr.New(mxerr.Forbidden, "you are not in room %s", roomID)
	}
	return nil
}

// getDirectoryVisibility answers whether a room is published.
// Spec: client-server-api, "GET /_matrix/client/v3/directory/list/room/{roomId}".
func (s *Server) getDirectoryVisibility(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	roomID, err := pathRoomID(r)
	if err != nil {
		return err
	}
	if _, err := s.rooms.rooms.RoomVersion(ctx, roomID); err != nil {
		return err
	}
	published, err := s.isPublished(ctx, roomID)
	if err != nil {
		return err
	}
	visibility := "private"
	if published {
		visibility = "public"
	}
	return httpx.OK(w, map[string]string{"visibility": visibility})
}

// putDirectoryVisibility publishes or unpublishes a room. It takes the
// power to change the room's canonical alias, as room moderators have,
// or being a server administrator: the directory is the server's, and
// the spec names administrators among those a server may let change it
// (Complement msc3902 "Room stats are correctly updated once state
// re-sync completes" has an administrator publish a room it has no power
// in).
// Spec: client-server-api, "PUT /_matrix/client/v3/directory/list/room/{roomId}".
func (s *Server) putDirectoryVisibility(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	roomID, err := pathRoomID(r)
	if err != nil {
		return err
	}
	var body struct {
		Visibility string `json:"visibility"`
	}
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return err
	}
	if body.Visibility != "public" && body.Visibility != "private" {
		return mxerr.New(mxerr.InvalidParam, "visibility must be public or private")
	}
	if _, err := s.rooms.rooms.RoomVersion(ctx, roomID); err != nil {
		return err
	}
	admin, err := s.isAdmin(ctx, caller(r).UserID)
	if err != nil {
		return err
	}
	if !admin {
		if err := s.requirePowerFor(ctx, caller(r).UserID, roomID, "m.room.canonical_alias"); err != nil {
			return err
		}
	}
	if err := s.setPublished(ctx, roomID, body.Visibility == "public"); err != nil {
		return err
	}
	return httpx.OK(w, httpx.EmptyObject)
}

// publicRoomsQuery is the request of GET and POST /publicRooms.
type publicRoomsQuery struct {
	Limit  *int   `json:"limit"`
	Since  string `json:"since"`
	Server string `json:"server"`
	Filter struct {
		GenericSearchTerm string             `json:"generic_search_term"`
		RoomTypes         []*json.RawMessage `json:"room_types"`
	} `json:"filter"`
	// IncludeAllNetworks adds the rooms application services published
	// for their third-party networks; ThirdPartyInstanceID lists those of
	// one network instead of the homeserver's own list.
	// Spec: client-server-api, "POST /_matrix/client/v3/publicRooms".
	IncludeAllNetworks   bool   `json:"include_all_networks"`
	ThirdPartyInstanceID string `json:"third_party_instance_id"`
}

// getPublicRooms lists the published rooms.
// Spec: client-server-api, "GET /_matrix/client/v3/publicRooms".
func (s *Server) getPublicRooms(w http.ResponseWriter, r *http.Request) error {
	var q publicRoomsQuery
	v := r.URL.Query()
	if raw := v.Get("limit"); raw != "" {
		n, err := strconv.Atoi(raw)
		if err != nil {
			return mxerr.New(mxerr.InvalidParam, "limit must be an integer")
		}
		q.Limit = &n
	}
	q.Since, q.Server = v.Get("since"), v.Get("server")
	// The spec's GET takes neither network parameter; Synapse reads both
	// from its query string as well, and mautrix-go's client sends them
	// there. With another server named, they are passed on to it
	// (remotePublicRooms).
	q.ThirdPartyInstanceID = v.Get("third_party_instance_id")
	switch raw := v.Get("include_all_networks"); raw {
	case "", "false":
	case "true":
		q.IncludeAllNetworks = true
	default:
		return mxerr.New(mxerr.InvalidParam, "include_all_networks must be true or false")
	}
	return s.publicRooms(w, r, &q)
}

// postPublicRooms lists the published rooms with a filter.
// Spec: client-server-api, "POST /_matrix/client/v3/publicRooms".
func (s *Server) postPublicRooms(w http.ResponseWriter, r *http.Request) error {
	var q publicRoomsQuery
	if err := httpx.DecodeJSON(r, &q); err != nil {
		return err
	}
	if server := r.URL.Query().Get("server"); server != "" {
		q.Server = server
	}
	return s.publicRooms(w, r, &q)
}

func (s *Server) publicRooms(w http.ResponseWriter, r *http.Request, q *publicRoomsQuery) error {
	if q.Server != "" && q.Server != s.serverName {
		return s.remotePublicRooms(w, r, q)
	}
	body, err := s.publicRoomsPage(r.Context(), q)
	if err != nil {
		return err
	}
	return httpx.OK(w, body)
}

// publicRoomsPage is one page of this server's published rooms, in the
// shape of the spec's PublicRoomsResponse.
func (s *Server) publicRoomsPage(ctx context.Context, q *publicRoomsQuery) (map[string]any, error) {
	limit := defaultPublicRoomsLimit
	if q.Limit != nil {
		if *q.Limit <= 0 {
			return nil, mxerr.New(mxerr.InvalidParam, "limit must be positive")
		}
		limit = min(*q.Limit, maxPublicRoomsLimit)
	}
	offset := 0
	if q.Since != "" {
		n, err := strconv.Atoi(strings.TrimPrefix(q.Since, "o"))
		if err != nil || n < 0 || !strings.HasPrefix(q.Since, "o") {
			return nil, mxerr.New(mxerr.InvalidParam, "since is not a token from this server")
		}
		offset = n
	}
	ids, err := s.directoryRooms(ctx, q)
	if err != nil {
		return nil, err
	}
	term := strings.ToLower(q.Filter.GenericSearchTerm)
	var rooms []*roomSummary
	for _, id := range ids {
		summary, err := s.summarise(ctx, id)
		if mxerr.Is(err, mxerr.NotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if term != "" && !summary.matches(term) || q.Filter.RoomTypes != nil && !summary.hasType(q.Filter.RoomTypes) {
			continue
		}
		rooms = append(rooms, summary)
	}
	// Largest rooms first, as clients have come to expect; ties by ID
	// so pages are stable.
	sort.SliceStable(rooms, func(i, j int) bool {
		if rooms[i].NumJoinedMembers != rooms[j].NumJoinedMembers {
			return rooms[i].NumJoinedMembers > rooms[j].NumJoinedMembers
		}
		return rooms[i].RoomID < rooms[j].RoomID
	})
	body := map[string]any{"total_room_count_estimate": len(rooms)}
	start := min(offset, len(rooms))
	end := min(start+limit, len(rooms))
	chunk := rooms[start:end]
	if chunk == nil {
		chunk = []*roomSummary{}
	}
	body["chunk"] = chunk
	if end < len(rooms) {
		body["next_batch"] = "o" + strconv.Itoa(end)
	}
	if start > 0 {
		body["prev_batch"] = "o" + strconv.Itoa(max(start-limit, 0))
	}
	return body, nil
}

// directoryRooms lists the rooms a /publicRooms request covers: the
// homeserver's own published rooms, those of one application service
// network (third_party_instance_id), or both kinds of all networks
// (include_all_networks).
//
// Spec: client-server-api, "POST /_matrix/client/v3/publicRooms":
// third_party_instance_id "can only be used if include_all_networks is
// false", and is the instance_id of a protocol instance from GET
// /thirdparty/protocols. The spec names no error for one that is not;
// Synapse answers 400 for an ID it cannot parse. Here an ID that does not
// name a registered service bridging some protocol is 400
// M_INVALID_PARAM, as is setting both; the network part is not checked
// against the service's instances (that would ask the service on every
// listing), so a network it never published to lists no rooms.
func (s *Server) directoryRooms(ctx context.Context, q *publicRoomsQuery) ([]string, error) {
	switch {
	case q.ThirdPartyInstanceID != "" && q.IncludeAllNetworks:
		return nil, mxerr.New(mxerr.InvalidParam, "third_party_instance_id can only be used if include_all_networks is false")
	case q.ThirdPartyInstanceID != "":
		reg, network := s.appservices.ParseInstanceID(q.ThirdPartyInstanceID)
		if reg == nil {
			return nil, mxerr.New(mxerr.InvalidParam, "unknown third_party_instance_id %q", q.ThirdPartyInstanceID)
		}
		return s.networkPublishedRooms(ctx, reg.ID, network)
	case q.IncludeAllNetworks:
		return s.allNetworksPublishedRooms(ctx)
	}
	return s.publishedRooms(ctx)
}

// putNetworkVisibility publishes a room in, or removes it from, the
// directory of one of the calling application service's networks. Only
// an application service's as_token may call it (a user's token is 403
// M_FORBIDDEN; guests are refused before, by the guest gate).
// Spec: client-server-api, "PUT /_matrix/client/v3/directory/list/appservice/{networkId}/{roomId}".
func (s *Server) putNetworkVisibility(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	me := caller(r)
	if me.AppServiceID == "" || s.appservices.ByID(me.AppServiceID) == nil {
		return mxerr.New(mxerr.Forbidden, "only application services may publish rooms in a network's directory")
	}
	network, err := unescapedParam(r, "networkId")
	if err != nil {
		return err
	}
	if network == "" {
		return mxerr.New(mxerr.InvalidParam, "the network ID is empty")
	}
	roomID, err := pathRoomID(r)
	if err != nil {
		return err
	}
	var body struct {
		Visibility *string `json:"visibility"`
	}
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return err
	}
	if body.Visibility == nil {
		return mxerr.New(mxerr.MissingParam, "visibility is required")
	}
	if *body.Visibility != "public" && *body.Visibility != "private" {
		return mxerr.New(mxerr.InvalidParam, "visibility must be public or private")
	}
	if _, err := s.rooms.rooms.RoomVersion(ctx, roomID); err != nil {
		return err
	}
	if err := s.setNetworkPublished(ctx, me.AppServiceID, network, roomID, *body.Visibility == "public"); err != nil {
		return err
	}
	return httpx.OK(w, httpx.EmptyObject)
}

// matches reports whether the lower-cased term appears in the room's
// name, topic, canonical alias or ID.
func (rs *roomSummary) matches(term string) bool {
	for _, field := range []string{rs.Name, rs.Topic, rs.CanonicalAlias, rs.RoomID} {
		if strings.Contains(strings.ToLower(field), term) {
			return true
		}
	}
	return false
}

// hasType reports whether the room's type is one of types (a JSON null
// stands for rooms without a type).
func (rs *roomSummary) hasType(types []*json.RawMessage) bool {
	for _, t := range types {
		if t == nil || string(*t) == "null" {
			if rs.RoomType == "" {
				return true
			}
			continue
		}
		var name string
		if json.Unmarshal(*t, &name) == nil && name == rs.RoomType {
			return true
		}
	}
	return false
}
