package clientapi

import (
	"context"
	"encoding/json"
	"net/http"
	"sort"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/roomserver"
)

// Server-side search limits.
const (
	defaultSearchLimit = 10
	maxSearchLimit     = 100
	// defaultSearchContext is the spec's default before_limit and
	// after_limit; maxSearchContext caps them.
	defaultSearchContext = 5
	maxSearchContext     = 100
	// maxSearchRounds bounds how many index pages one request reads while
	// history visibility hides matches.
	maxSearchRounds = 20
)

// searchRoutes registers server-side search, the space hierarchy and the
// user directory. The two stream indexers live here, shared by the
// handlers that read their indexes.
func (s *Server) searchRoutes(r chi.Router) {
	// Search also indexes backfilled history: a user who scrolled back
	// through a room joined over federation searches what they read.
	events := &streamIndexer{name: searchIndexerName, db: s.db, rooms: s.rooms.rooms, index: s.indexSearchable, history: true}
	users := &streamIndexer{name: userDirectoryIndexerName, db: s.db, rooms: s.rooms.rooms, index: s.indexUserDirectory,
		resynced: s.indexUserDirectoryRoom}
	handle(r, http.MethodPost, "/_matrix/client/v3/search", func(w http.ResponseWriter, r *http.Request) error {
		return s.search(w, r, events)
	})
	handle(r, http.MethodPost, "/_matrix/client/v3/user_directory/search", func(w http.ResponseWriter, r *http.Request) error {
		return s.searchUserDirectory(w, r, users)
	})
	handle(r, http.MethodGet, "/_matrix/client/v1/rooms/{roomId}/hierarchy", s.hierarchy)
}

// searchRequest is the body of POST /search.
type searchRequest struct {
	SearchCategories *struct {
		RoomEvents *roomEventsCriteria `json:"room_events"`
	} `json:"search_categories"`
}

// roomEventsCriteria is the room_events search category.
type roomEventsCriteria struct {
	SearchTerm   *string          `json:"search_term"`
	Keys         []string         `json:"keys"`
	Filter       *RoomEventFilter `json:"filter"`
	OrderBy      string           `json:"order_by"`
	EventContext *struct {
		BeforeLimit    *int `json:"before_limit"`
		AfterLimit     *int `json:"after_limit"`
		IncludeProfile bool `json:"include_profile"`
	} `json:"event_context"`
	IncludeState bool `json:"include_state"`
	Groupings    struct {
		GroupBy []struct {
			Key string `json:"key"`
		} `json:"group_by"`
	} `json:"groupings"`
}

// search performs a server-side search.
// Spec: client-server-api, "POST /_matrix/client/v3/search" and "Server Side Search".
func (s *Server) search(w http.ResponseWriter, r *http.Request, ix *streamIndexer) error {
	var req searchRequest
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	if req.SearchCategories == nil {
		return mxerr.New(mxerr.BadJSON, "search_categories is required")
	}
	categories := map[string]any{}
	if rc := req.SearchCategories.RoomEvents; rc != nil {
		result, err := s.searchRoomEvents(r.Context(), caller(r).UserID, caller(r).DeviceID, rc, r.URL.Query().Get("next_batch"), ix)
		if err != nil {
			return err
		}
		categories["room_events"] = result
	}
	return httpx.OK(w, map[string]any{"search_categories": categories})
}

// searchPlan is a validated room_events search.
type searchPlan struct {
	query    searchQuery
	filter   *RoomEventFilter
	limit    int
	groupBy  []string
	before   int // context sizes; -1 without event_context
	after    int
	profiles bool
}

// planSearch validates c and turns it into a query over the rooms
// userID has been in (joined, left or banned from: the spec searches
// "all rooms that the user has been in, including those that they have
// left"; history visibility then hides what they may not see).
func (s *Server) planSearch(ctx context.Context, userID string, c *roomEventsCriteria, nextBatch string) (*searchPlan, error) {
	if c.SearchTerm == nil {
		return nil, mxerr.New(mxerr.BadJSON, "room_events.search_term is required")
	}
	p := &searchPlan{filter: c.Filter, limit: defaultSearchLimit, before: -1, after: -1}
	p.query.Before = noBefore
	p.query.Term = *c.SearchTerm
	switch c.OrderBy {
	case "", "rank":
		p.query.ByRank = true
	case "recent":
	default:
		return nil, mxerr.New(mxerr.InvalidParam, "order_by must be rank or recent")
	}
	p.query.Keys = c.Keys
	if c.Keys == nil {
		p.query.Keys = []string{"content.body", "content.name", "content.topic"}
	}
	for _, k := range p.query.Keys {
		if _, ok := searchKeyTypes[k]; !ok {
			return nil, mxerr.New(mxerr.InvalidParam, "keys: %q is not content.body, content.name or content.topic", k)
		}
	}
	for _, g := range c.Groupings.GroupBy {
		if g.Key != "room_id" && g.Key != "sender" {
			return nil, mxerr.New(mxerr.InvalidParam, "group_by key must be room_id or sender")
		}
		p.groupBy = append(p.groupBy, g.Key)
	}
	if ec := c.EventContext; ec != nil {
		p.before, p.after, p.profiles = defaultSearchContext, defaultSearchContext, ec.IncludeProfile
		for _, lim := range []struct {
			v   *int
			dst *int
		}{{ec.BeforeLimit, &p.before}, {ec.AfterLimit, &p.after}} {
			if lim.v != nil {
				if *lim.v < 0 {
					return nil, mxerr.New(mxerr.InvalidParam, "event_context limits must not be negative")
				}
				*lim.dst = min(*lim.v, maxSearchContext)
			}
		}
	}
	f := c.Filter
	if f != nil {
		if err := f.validate("filter"); err != nil {
			return nil, err
		}
		if f.Limit != nil {
			p.limit = min(*f.Limit, maxSearchLimit)
		}
		p.query.Senders, p.query.NotSenders = f.Senders, f.NotSenders
	}
	// The indexed event types the filter lets through.
	for _, t := range []string{"m.room.message", "m.room.name", "m.room.topic"} {
		if f == nil || (f.Types == nil || matchesAnyType(f.Types, t)) && !matchesAnyType(f.NotTypes, t) {
			p.query.Types = append(p.query.Types, t)
		}
	}
	for _, membership := range []string{"join", "leave", "ban"} {
		ids, err := s.rooms.rooms.RoomsForUser(ctx, userID, membership)
		if err != nil {
			return nil, err
		}
		for _, id := range ids {
			if f == nil || (f.Rooms == nil || contains(f.Rooms, id)) && !contains(f.NotRooms, id) {
				p.query.RoomIDs = append(p.query.RoomIDs, id)
			}
		}
	}
	if err := p.parseNextBatch(nextBatch); err != nil {
		return nil, err
	}
	return p, nil
}

// Search pagination tokens: "t<position>" continues a recent search
// below that position (negative in backfilled history), "o<offset>" a
// ranked one after that many ranked matches.
func (p *searchPlan) parseNextBatch(token string) error {
	if token == "" {
		return nil
	}
	bad := mxerr.New(mxerr.InvalidParam, "next_batch is not a token from this search")
	prefix, want := "t", &p.query.Before
	var offset int64
	if p.query.ByRank {
		prefix, want = "o", &offset
	}
	rest, ok := strings.CutPrefix(token, prefix)
	n, err := strconv.ParseInt(rest, 10, 64)
	if !ok || err != nil || p.query.ByRank && (n < 0 || n > 1<<31) {
		return bad
	}
	*want = n
	p.query.Offset = int(offset)
	return nil
}

func (p *searchPlan) nextBatch() string {
	if p.query.ByRank {
		return "o" + strconv.Itoa(p.query.Offset)
	}
	return "t" + strconv.FormatInt(p.query.Before, 10)
}

// searchRoomEvents answers the room_events category.
func (s *Server) searchRoomEvents(ctx context.Context, userID, deviceID string, c *roomEventsCriteria, nextBatch string, ix *streamIndexer) (map[string]any, error) {
	p, err := s.planSearch(ctx, userID, c, nextBatch)
	if err != nil {
		return nil, err
	}
	if err := ix.catchUp(ctx); err != nil {
		return nil, err
	}
	count, err := s.searchCount(ctx, p.query)
	if err != nil {
		return nil, err
	}
	hits, events, err := s.visibleMatches(ctx, userID, p)
	if err != nil {
		return nil, err
	}
	f := s.formatter(userID, deviceID)
	rendered, err := f.many(ctx, events)
	if err != nil {
		return nil, err
	}
	results := make([]map[string]any, 0, len(events))
	highlights := map[string]bool{}
	for _, w := range searchWords(p.query.Term) {
		highlights[w] = true
	}
	for i, ev := range events {
		result := map[string]any{"rank": hits[i].Rank, "result": rendered[i]}
		if p.before >= 0 {
			if result["context"], err = s.searchContext(ctx, f, ev, p); err != nil {
				return nil, err
			}
		}
		results = append(results, result)
		for _, w := range hits[i].Highlights {
			highlights[w] = true
		}
	}
	body := map[string]any{"count": count, "results": results, "highlights": sortedKeys(highlights)}
	if len(events) == p.limit && p.limit > 0 {
		body["next_batch"] = p.nextBatch()
	}
	if len(p.groupBy) > 0 {
		body["groups"] = searchGroups(p.groupBy, events)
	}
	if c.IncludeState {
		state := map[string]any{}
		for _, ev := range events {
			if _, done := state[ev.RoomID]; done {
				continue
			}
			evs, err := s.rooms.rooms.CurrentState(ctx, userID, ev.RoomID)
			if err != nil {
				return nil, err
			}
			if state[ev.RoomID], err = f.many(ctx, evs); err != nil {
				return nil, err
			}
		}
		body["state"] = state
	}
	return body, nil
}

// visibleMatches reads index pages until it has p.limit matches userID
// may see (or the index is exhausted), leaving p.query positioned after
// the last match taken.
func (s *Server) visibleMatches(ctx context.Context, userID string, p *searchPlan) ([]searchHit, []*roomserver.Event, error) {
	var hits []searchHit
	var events []*roomserver.Event
	q := &p.query
	for round := 0; round < maxSearchRounds && len(events) < p.limit; round++ {
		q.Limit = p.limit
		page, err := s.searchPage(ctx, *q)
		if err != nil {
			return nil, nil, err
		}
		for _, h := range page {
			if len(events) == p.limit {
				break
			}
			q.Before, q.Offset = h.StreamPos, q.Offset+1
			ev, err := s.rooms.rooms.Event(ctx, userID, h.EventID)
			if mxerr.Is(err, mxerr.NotFound) {
				continue // history visibility hides it
			}
			if err != nil {
				return nil, nil, err
			}
			if !p.filter.matches(ev) { // contains_url
				continue
			}
			hits, events = append(hits, h), append(events, ev)
		}
		if len(page) < q.Limit {
			break
		}
	}
	return hits, events, nil
}

// searchContext is the context of one result: the events around it and,
// if asked, the profiles of their senders at the time of the result.
// Spec: client-server-api, "POST /_matrix/client/v3/search", "event_context".
func (s *Server) searchContext(ctx context.Context, f *eventFormatter, ev *roomserver.Event, p *searchPlan) (map[string]any, error) {
	at := tokenOf(ev).String()
	out := map[string]any{"start": at, "end": at}
	var all []*roomserver.Event
	for _, side := range []struct {
		dir   roomserver.Direction
		limit int
		key   string
		token string
	}{{roomserver.Backward, p.before, "events_before", "start"}, {roomserver.Forward, p.after, "events_after", "end"}} {
		var evs []*roomserver.Event
		if side.limit > 0 {
			pg, err := s.paginate(ctx, f.userID, ev.RoomID, at, "", side.dir, side.limit, nil)
			if err != nil {
				return nil, err
			}
			evs = pg.events
			if pg.end != "" {
				out[side.token] = pg.end
			} else if n := len(evs); n > 0 {
				out[side.token] = tokenOf(evs[n-1]).String()
			}
		}
		rendered, err := f.many(ctx, evs)
		if err != nil {
			return nil, err
		}
		out[side.key] = rendered
		all = append(all, evs...)
	}
	if p.profiles {
		info, err := s.historicProfiles(ctx, f.userID, ev, append(all, ev))
		if err != nil {
			return nil, err
		}
		out["profile_info"] = info
	}
	return out, nil
}

// historicProfiles returns the displayname and avatar_url of the senders
// of evs as the member events in the state after ev gave them.
func (s *Server) historicProfiles(ctx context.Context, userID string, ev *roomserver.Event, evs []*roomserver.Event) (map[string]any, error) {
	senders := map[string]bool{}
	for _, e := range evs {
		senders[e.Sender] = true
	}
	state, err := s.rooms.rooms.StateAt(ctx, userID, ev.EventID)
	if err != nil {
		return nil, err
	}
	out := map[string]any{}
	for _, m := range state.After {
		if m.Type != "m.room.member" || m.StateKey == nil || !senders[*m.StateKey] {
			continue
		}
		var c struct {
			DisplayName *string `json:"displayname"`
			AvatarURL   *string `json:"avatar_url"`
		}
		if json.Unmarshal(m.Content, &c) != nil {
			continue
		}
		profile := map[string]string{}
		if c.DisplayName != nil {
			profile["displayname"] = *c.DisplayName
		}
		if c.AvatarURL != nil {
			profile["avatar_url"] = *c.AvatarURL
		}
		out[*m.StateKey] = profile
	}
	return out, nil
}

// searchGroups partitions the page's results by each requested key. A
// group's order is the position of its first result; groups carry no
// next_batch of their own (the spec lets a server not paginate them).
func searchGroups(groupBy []string, events []*roomserver.Event) map[string]any {
	out := map[string]any{}
	for _, key := range groupBy {
		groups := map[string]map[string]any{}
		for i, ev := range events {
			value := ev.RoomID
			if key == "sender" {
				value = ev.Sender
			}
			g := groups[value]
			if g == nil {
				g = map[string]any{"order": len(groups) + 1, "results": []string{}}
				groups[value] = g
			}
			g["results"] = append(g["results"].([]string), events[i].EventID)
		}
		out[key] = groups
	}
	return out
}

func sortedKeys(set map[string]bool) []string {
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
