package federationapi

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/roomserver"
)

// federationRoutes mounts the authenticated /_matrix/federation routes.
func (s *Server) federationRoutes(r chi.Router) {
	r.Method(http.MethodPut, "/v1/send/{txnID}", httpx.H(s.sendTransaction))
	r.Method(http.MethodGet, "/v1/event/{eventID}", httpx.H(s.getEvent))
	r.Method(http.MethodGet, "/v1/query/directory", httpx.H(s.queryDirectory))
	r.Method(http.MethodGet, "/v1/query/profile", httpx.H(s.queryProfile))
	r.Method(http.MethodGet, "/v1/publicRooms", httpx.H(s.publicRooms))
	r.Method(http.MethodPost, "/v1/publicRooms", httpx.H(s.publicRooms))
	r.Method(http.MethodPost, "/v1/user/keys/query", httpx.H(s.userKeysQuery))
	r.Method(http.MethodPost, "/v1/user/keys/claim", httpx.H(s.userKeysClaim))
	r.Method(http.MethodGet, "/v1/user/devices/{userID}", httpx.H(s.userDevices))
	r.Method(http.MethodPost, "/unstable/event_relationships", httpx.H(s.eventRelationships)) // MSC2836: relationships.go
	r.Group(func(r chi.Router) {
		r.Use(s.roomACL)
		// Spec: server-server-api, "Server Access Control Lists (ACLs)":
		// invite (v1 and v2) is among the endpoints that MUST be protected.
		r.Method(http.MethodPut, "/v2/invite/{roomID}/{eventID}", httpx.H(s.invite))
		r.Method(http.MethodPut, "/v1/invite/{roomID}/{eventID}", httpx.H(s.inviteV1))
		r.Method(http.MethodGet, "/v1/state/{roomID}", httpx.H(s.getState))
		r.Method(http.MethodGet, "/v1/state_ids/{roomID}", httpx.H(s.getStateIDs))
		r.Method(http.MethodGet, "/v1/event_auth/{roomID}/{eventID}", httpx.H(s.getEventAuth))
		r.Method(http.MethodGet, "/v1/backfill/{roomID}", httpx.H(s.backfill))
		r.Method(http.MethodPost, "/v1/get_missing_events/{roomID}", httpx.H(s.getMissingEvents))
		r.Method(http.MethodGet, "/v1/timestamp_to_event/{roomID}", httpx.H(s.timestampToEvent))
		r.Method(http.MethodGet, "/v1/hierarchy/{roomID}", httpx.H(s.hierarchy))
		r.Method(http.MethodPut, "/v1/exchange_third_party_invite/{roomID}", httpx.H(s.exchangeThirdPartyInvite))
		r.Method(http.MethodGet, "/v1/make_join/{roomID}/{userID}", httpx.H(s.makeMembership("join")))
		r.Method(http.MethodGet, "/v1/make_leave/{roomID}/{userID}", httpx.H(s.makeMembership("leave")))
		r.Method(http.MethodGet, "/v1/make_knock/{roomID}/{userID}", httpx.H(s.makeMembership("knock")))
		r.Method(http.MethodPut, "/v2/send_join/{roomID}/{eventID}", httpx.H(s.sendMembership("join")))
		r.Method(http.MethodPut, "/v2/send_leave/{roomID}/{eventID}", httpx.H(s.sendMembership("leave")))
		r.Method(http.MethodPut, "/v1/send_knock/{roomID}/{eventID}", httpx.H(s.sendMembership("knock")))
		r.Method(http.MethodPut, "/v1/send_join/{roomID}/{eventID}", httpx.H(s.sendMembershipV1("join")))
		r.Method(http.MethodPut, "/v1/send_leave/{roomID}/{eventID}", httpx.H(s.sendMembershipV1("leave")))
	})
}

// roomParam is the {roomID} path parameter, unescaped.
func roomParam(r *http.Request) string {
	return pathParam(r, "roomID")
}

func pathParam(r *http.Request, name string) string {
	v := chi.URLParam(r, name)
	if u, err := url.PathUnescape(v); err == nil {
		return u
	}
	return v
}

func pathEscape(s string) string { return url.PathEscape(s) }

// pdus returns the federation JSON of events.
func pdus(evs []*roomserver.Event) []json.RawMessage {
	out := make([]json.RawMessage, len(evs))
	for i, e := range evs {
		out[i] = e.JSON
	}
	return out
}

func ids(evs []*roomserver.Event) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.EventID
	}
	return out
}

// getEvent is GET /v1/event/{eventId}: a transaction with one PDU.
func (s *Server) getEvent(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	origin := originOf(ctx)
	ev, err := s.rooms.EventForServer(ctx, origin, pathParam(r, "eventID"))
	if err != nil {
		return err
	}
	if err := s.checkACL(ctx, ev.RoomID, origin); err != nil {
		return err
	}
	return httpx.OK(w, map[string]any{
		"origin": s.serverName, "origin_server_ts": s.now().UnixMilli(), "pdus": []json.RawMessage{ev.JSON},
	})
}

func (s *Server) stateAt(r *http.Request) (state, authChain []*roomserver.Event, err error) {
	eventID := r.URL.Query().Get("event_id")
	if eventID == "" {
		return nil, nil, mxerr.New(mxerr.MissingParam, "event_id is required")
	}
	// A room with partial state cannot give the full state at any event
	// yet (partial_state_serve.go).
	if partial, err := s.rooms.IsPartialState(r.Context(), roomParam(r)); err != nil || partial {
		if err == nil {
			err = mxerr.New(mxerr.Forbidden, "this server has only partial state for the room")
		}
		return nil, nil, err
	}
	return s.rooms.StateForServer(r.Context(), originOf(r.Context()), roomParam(r), eventID)
}

// getState is GET /v1/state/{roomId}?event_id=: the state before the
// event and its auth chain.
func (s *Server) getState(w http.ResponseWriter, r *http.Request) error {
	state, chain, err := s.stateAt(r)
	if err != nil {
		return err
	}
	return httpx.OK(w, map[string]any{"pdus": pdus(state), "auth_chain": pdus(chain)})
}

// getStateIDs is GET /v1/state_ids/{roomId}?event_id=.
func (s *Server) getStateIDs(w http.ResponseWriter, r *http.Request) error {
	state, chain, err := s.stateAt(r)
	if err != nil {
		return err
	}
	return httpx.OK(w, map[string]any{"pdu_ids": ids(state), "auth_chain_ids": ids(chain)})
}

// getEventAuth is GET /v1/event_auth/{roomId}/{eventId}.
func (s *Server) getEventAuth(w http.ResponseWriter, r *http.Request) error {
	chain, err := s.rooms.EventAuthForServer(r.Context(), originOf(r.Context()), roomParam(r), pathParam(r, "eventID"))
	if err != nil {
		return err
	}
	return httpx.OK(w, map[string]any{"auth_chain": pdus(chain)})
}

// backfill is GET /v1/backfill/{roomId}?v=...&limit=.
func (s *Server) backfill(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	from := q["v"]
	if len(from) == 0 {
		return mxerr.New(mxerr.MissingParam, "v is required")
	}
	limit, err := strconv.Atoi(q.Get("limit"))
	if err != nil || limit <= 0 {
		return mxerr.New(mxerr.InvalidParam, "limit must be a positive integer")
	}
	evs, err := s.rooms.BackfillForServer(r.Context(), originOf(r.Context()), roomParam(r), from, limit)
	if err != nil {
		return err
	}
	return httpx.OK(w, map[string]any{
		"origin": s.serverName, "origin_server_ts": s.now().UnixMilli(), "pdus": pdus(evs),
	})
}

// getMissingEvents is POST /v1/get_missing_events/{roomId}.
func (s *Server) getMissingEvents(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		Earliest []string `json:"earliest_events"`
		Latest   []string `json:"latest_events"`
		Limit    *int     `json:"limit"`
		MinDepth int64    `json:"min_depth"`
	}
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	limit := 10
	if req.Limit != nil {
		limit = *req.Limit
	}
	evs, err := s.rooms.MissingEventsForServer(r.Context(), originOf(r.Context()), roomParam(r), req.Earliest, req.Latest, limit, req.MinDepth)
	if err != nil {
		return err
	}
	return httpx.OK(w, map[string]any{"events": pdus(evs)})
}

// timestampToEvent is GET /v1/timestamp_to_event/{roomId}?ts=&dir=.
func (s *Server) timestampToEvent(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	ts, err := strconv.ParseInt(q.Get("ts"), 10, 64)
	if err != nil {
		return mxerr.New(mxerr.InvalidParam, "ts must be an integer")
	}
	dir := roomserver.Direction(q.Get("dir"))
	if dir != roomserver.Forward && dir != roomserver.Backward {
		return mxerr.New(mxerr.InvalidParam, "dir must be f or b")
	}
	ev, err := s.rooms.EventNearTimestamp(r.Context(), originOf(r.Context()), roomParam(r), ts, dir)
	if err != nil {
		return err
	}
	return httpx.OK(w, map[string]any{"event_id": ev.EventID, "origin_server_ts": ev.OriginServerTS})
}

// queryDirectory is GET /v1/query/directory?room_alias=.
func (s *Server) queryDirectory(w http.ResponseWriter, r *http.Request) error {
	alias := r.URL.Query().Get("room_alias")
	if !strings.HasPrefix(alias, "#") || domainOf(alias) != s.serverName {
		return mxerr.New(mxerr.NotFound, "not an alias of this server")
	}
	if s.aliases == nil {
		return mxerr.New(mxerr.NotFound, "room alias not found")
	}
	roomID, err := s.aliases.ResolveAlias(r.Context(), alias)
	if err != nil {
		return err
	}
	servers, err := s.rooms.JoinedServers(r.Context(), roomID)
	if err != nil {
		return err
	}
	return httpx.OK(w, map[string]any{"room_id": roomID, "servers": servers})
}

// queryProfile is GET /v1/query/profile?user_id=&field=.
func (s *Server) queryProfile(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	userID := q.Get("user_id")
	if domainOf(userID) != s.serverName {
		return mxerr.New(mxerr.InvalidParam, "user %s is not on this server", userID)
	}
	if s.profiles == nil {
		return mxerr.New(mxerr.NotFound, "profile not found")
	}
	fields, err := s.profiles.Profile(r.Context(), userID)
	if err != nil {
		return err
	}
	if field := q.Get("field"); field != "" {
		v, ok := fields[field]
		if !ok {
			return mxerr.New(mxerr.NotFound, "no %s in this profile", field)
		}
		return httpx.OK(w, map[string]json.RawMessage{field: v})
	}
	return httpx.OK(w, fields)
}

// publicRooms is GET/POST /v1/publicRooms.
func (s *Server) publicRooms(w http.ResponseWriter, r *http.Request) error {
	if s.directory == nil {
		return mxerr.New(mxerr.Unrecognized, "this server has no public room directory yet").WithStatus(http.StatusNotFound)
	}
	q := r.URL.Query()
	limit, _ := strconv.Atoi(q.Get("limit"))
	since := q.Get("since")
	filter := ""
	// Spec: server-server-api, "GET /_matrix/federation/v1/publicRooms"
	// and "POST …": include_all_networks and third_party_instance_id, in
	// the query or in the body.
	thirdPartyInstanceID := q.Get("third_party_instance_id")
	var includeAllNetworks bool
	switch raw := q.Get("include_all_networks"); raw {
	case "", "false":
	case "true":
		includeAllNetworks = true
	default:
		return mxerr.New(mxerr.InvalidParam, "include_all_networks must be true or false")
	}
	if r.Method == http.MethodPost {
		var req struct {
			Limit  int    `json:"limit"`
			Since  string `json:"since"`
			Filter struct {
				Term string `json:"generic_search_term"`
			} `json:"filter"`
			IncludeAllNetworks   bool   `json:"include_all_networks"`
			ThirdPartyInstanceID string `json:"third_party_instance_id"`
		}
		if err := httpx.DecodeJSON(r, &req); err != nil {
			return err
		}
		limit, since, filter = req.Limit, req.Since, req.Filter.Term
		includeAllNetworks, thirdPartyInstanceID = req.IncludeAllNetworks, req.ThirdPartyInstanceID
	}
	body, err := s.directory.PublicRooms(r.Context(), limit, since, filter, includeAllNetworks, thirdPartyInstanceID)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	_, err = w.Write(body)
	return err
}
