package syncapi

import (
	"context"
	"encoding/json"
	"math"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/tidwall/gjson"

	"github.com/myelin-chat/myelin/clientapi"
	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/roomserver"
)

// Simplified sliding sync. Spec: MSC4186.

const (
	maxLists         = 100
	maxSubscriptions = 100
	unknownPos       = mxerr.Code("M_UNKNOWN_POS")
)

// bumpTypes are the event types that move bump_stamp. Spec: MSC4186,
// RoomResult.bump_stamp.
var bumpTypes = []string{"m.room.create", "m.room.message", "m.room.encrypted", "m.sticker",
	"m.call.invite", "m.poll.start", "m.beacon_info"}

type slidingRequest struct {
	ConnID            string                         `json:"conn_id"`
	Pos               string                         `json:"pos"`
	Timeout           *int64                         `json:"timeout"`
	SetPresence       string                         `json:"set_presence"`
	Lists             map[string]slidingList         `json:"lists"`
	RoomSubscriptions map[string]slidingRoomConfig   `json:"room_subscriptions"`
	Extensions        map[string]slidingExtensionReq `json:"extensions"`
}

type slidingRoomConfig struct {
	TimelineLimit int             `json:"timeline_limit"`
	RequiredState json.RawMessage `json:"required_state"`
}

type slidingList struct {
	slidingRoomConfig
	// Range is MSC4186's [start, end]; Ranges is the earlier list of
	// ranges Element X sends. Both are inclusive.
	Range   []int64         `json:"range"`
	Ranges  [][]int64       `json:"ranges"`
	Filters *slidingFilters `json:"filters"`
}

type slidingFilters struct {
	IsDM         *bool     `json:"is_dm"`
	IsEncrypted  *bool     `json:"is_encrypted"`
	IsInvited    *bool     `json:"is_invited"`
	IsInvite     *bool     `json:"is_invite"` // earlier name
	Spaces       []string  `json:"spaces"`
	RoomTypes    []*string `json:"room_types"`
	NotRoomTypes []*string `json:"not_room_types"`
	Tags         []string  `json:"tags"`
	NotTags      []string  `json:"not_tags"`
}

type slidingExtensionReq struct {
	Enabled *bool  `json:"enabled"`
	Since   string `json:"since"` // to_device
	// Lists and Rooms scope the room extensions (typing, receipts) to
	// the rooms of these lists and these room subscriptions; "*" is all
	// of them, and absent means ["*"].
	Lists []string `json:"lists"`
	Rooms []string `json:"rooms"`
	Limit *int     `json:"limit"` // to_device
}

type slidingResponse struct {
	Pos        string                        `json:"pos"`
	Lists      map[string]slidingListResult  `json:"lists"`
	Rooms      map[string]*slidingRoomResult `json:"rooms"`
	Extensions map[string]any                `json:"extensions"`
}

type slidingListResult struct {
	Count int `json:"count"`
}

type hero struct {
	UserID      string `json:"user_id"`
	DisplayName string `json:"displayname,omitempty"`
	AvatarURL   string `json:"avatar_url,omitempty"`
}

type slidingRoomResult struct {
	Name             *string           `json:"name,omitempty"`
	Avatar           *string           `json:"avatar,omitempty"`
	Heroes           []hero            `json:"heroes,omitempty"`
	IsDM             *bool             `json:"is_dm,omitempty"`
	Initial          bool              `json:"initial,omitempty"`
	ExpandedTimeline bool              `json:"expanded_timeline,omitempty"`
	RequiredState    []json.RawMessage `json:"required_state,omitempty"`
	Timeline         []json.RawMessage `json:"timeline,omitempty"`
	PrevBatch        string            `json:"prev_batch,omitempty"`
	Limited          bool              `json:"limited,omitempty"`
	NumLive          *int              `json:"num_live,omitempty"`
	JoinedCount      *int              `json:"joined_count,omitempty"`
	InvitedCount     *int              `json:"invited_count,omitempty"`
	// From Deps.Push (all threads together). MSC4186 dropped these;
	// Element X releases built against the earlier draft still read them.
	NotificationCount int             `json:"notification_count"`
	HighlightCount    int             `json:"highlight_count"`
	BumpStamp         int64           `json:"bump_stamp,omitempty"`
	Membership        string          `json:"membership,omitempty"`
	Lists             []string        `json:"lists,omitempty"`
	StrippedState     []strippedEvent `json:"stripped_state,omitempty"`
	InviteState       []strippedEvent `json:"invite_state,omitempty"` // earlier name of stripped_state
}

// slidingSync answers POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync.
func (s *Server) slidingSync(w http.ResponseWriter, r *http.Request) error {
	caller := authn.FromContext(r.Context())
	var req slidingRequest
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	// The earlier draft passed pos, timeout and set_presence as query
	// parameters; Element X still does.
	q := r.URL.Query()
	if req.Pos == "" {
		req.Pos = q.Get("pos")
	}
	if req.Timeout == nil && q.Get("timeout") != "" {
		ms, err := strconv.ParseInt(q.Get("timeout"), 10, 64)
		if err != nil || ms < 0 {
			return mxerr.New(mxerr.InvalidParam, "timeout must be a non-negative integer")
		}
		req.Timeout = &ms
	}
	if req.SetPresence == "" {
		req.SetPresence = q.Get("set_presence")
	}
	if req.SetPresence == "" {
		req.SetPresence = "online"
	}
	if err := s.setPresence(r.Context(), caller.UserID, req.SetPresence); err != nil {
		return err
	}
	if len(req.Lists) > maxLists || len(req.RoomSubscriptions) > maxSubscriptions {
		return mxerr.New(mxerr.InvalidParam, "at most %d lists and %d room subscriptions", maxLists, maxSubscriptions)
	}
	key := connKey{caller.UserID, caller.DeviceID, req.ConnID}
	prev, from, err := s.loadConn(r.Context(), key, req.Pos)
	if err != nil {
		return err
	}
	timeout := time.Duration(0)
	if req.Timeout != nil && req.Pos != "" {
		timeout = min(time.Duration(*req.Timeout)*time.Millisecond, maxTimeout)
	}
	resp, next, err := s.slidingWait(r.Context(), caller, &req, prev, timeout)
	if err != nil {
		return err
	}
	seq, err := s.saveConn(r.Context(), key, from, next)
	if err != nil {
		return err
	}
	resp.Pos = next.heads.String() + "." + strconv.FormatInt(seq, 10)
	return httpx.OK(w, resp)
}

// connFrom is where a request's connection state came from, for
// saveConn: the in-memory connection and the sequence number it started
// from (math.MaxInt64 for a new connection), or, in split mode, the
// sequence number in Redis (-1 for a new connection).
type connFrom struct {
	conn *slidingConn
	seq  int64
}

// loadConn returns the state pos names (a fresh one when pos is empty),
// from this process's memory or, in split mode, from Redis
// (sliding_redis.go); M_UNKNOWN_POS when it names none.
func (s *Server) loadConn(ctx context.Context, key connKey, pos string) (*connState, connFrom, error) {
	unknown := mxerr.New(unknownPos, "unknown pos; start the connection again")
	if s.slidingRedis != nil {
		if pos == "" {
			return &connState{rooms: map[string]sentRoom{}}, connFrom{seq: -1}, nil
		}
		heads, seq, ok := splitPos(pos)
		if !ok {
			return nil, connFrom{}, unknown
		}
		st, err := s.slidingRedis.load(ctx, key, seq, heads)
		if err != nil {
			return nil, connFrom{}, err
		}
		if st == nil {
			return nil, connFrom{}, unknown
		}
		return st, connFrom{seq: seq}, nil
	}
	if pos == "" {
		return &connState{rooms: map[string]sentRoom{}}, connFrom{conn: s.sliding.get(key, true), seq: math.MaxInt64}, nil
	}
	_, seqText, _ := strings.Cut(pos, ".")
	seq, err := strconv.ParseInt(seqText, 10, 64)
	conn := s.sliding.get(key, false)
	if conn == nil || err != nil {
		return nil, connFrom{}, unknown
	}
	st := conn.state(seq)
	if st == nil {
		return nil, connFrom{}, unknown
	}
	return st, connFrom{conn: conn, seq: seq}, nil
}

// saveConn stores next, the state after a response to a request that
// started from from, where loadConn found it, and returns its sequence
// number.
func (s *Server) saveConn(ctx context.Context, key connKey, from connFrom, next *connState) (int64, error) {
	if s.slidingRedis != nil {
		return s.slidingRedis.save(ctx, key, from.seq, next)
	}
	return from.conn.store(from.seq, next), nil
}

func (s *Server) slidingWait(ctx context.Context, caller *authn.Device, req *slidingRequest, prev *connState, timeout time.Duration) (*slidingResponse, *connState, error) {
	if timeout <= 0 {
		return s.slidingCompute(ctx, caller, req, prev)
	}
	memberships, err := s.rooms.UserMemberships(ctx, caller.UserID)
	if err != nil {
		return nil, nil, err
	}
	roomIDs := make([]string, len(memberships))
	for i, m := range memberships {
		roomIDs[i] = m.RoomID
	}
	wt := s.waker.register(caller.UserID, roomIDs)
	defer s.waker.unregister(wt)
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		resp, next, err := s.slidingCompute(ctx, caller, req, prev)
		if err != nil || len(resp.Rooms) > 0 || extensionsHaveData(resp.Extensions) {
			return resp, next, err
		}
		select {
		case <-wt.wake:
		case <-deadline.C:
			return resp, next, nil
		case <-ctx.Done():
			return resp, next, nil
		}
	}
}

// candidate is a room in the user's server-side list.
type candidate struct {
	m      roomserver.MembershipEntry
	latest int64 // recency: latest event position (membership position if not joined)
	bump   int64
	meta   *roomMeta // loaded on demand for filters
}

type roomMeta struct {
	encrypted bool
	roomType  *string
}

func (s *Server) slidingCompute(ctx context.Context, caller *authn.Device, req *slidingRequest, prev *connState) (*slidingResponse, *connState, error) {
	userID := caller.UserID
	heads, memberships, err := s.heads(ctx, userID, false)
	if err != nil {
		return nil, nil, err
	}
	acct, acctHead, err := s.acct.AccountDataSince(ctx, userID, 0)
	if err != nil {
		return nil, nil, err
	}
	heads.AccountData = acctHead
	cands, err := s.candidates(ctx, memberships, prev, heads.Room)
	if err != nil {
		return nil, nil, err
	}
	if cands, err = s.dropHiddenInvites(ctx, userID, cands); err != nil {
		return nil, nil, err
	}
	next := &connState{heads: heads, rooms: make(map[string]sentRoom, len(prev.rooms))}
	for id, sr := range prev.rooms {
		next.rooms[id] = sr
	}
	resp := &slidingResponse{Lists: map[string]slidingListResult{}, Rooms: map[string]*slidingRoomResult{}, Extensions: map[string]any{}}
	dms, tags, ignored := directRooms(acct), roomTags(acct), ignoredInAccountData(acct)
	if cands, err = s.withoutIgnoredInvites(ctx, userID, cands, ignored); err != nil {
		return nil, nil, err
	}
	configs := map[string]*roomConfig{}
	addConfig := func(roomID string, rc slidingRoomConfig, list string) error {
		sel, err := parseRequiredState(rc.RequiredState, userID)
		if err != nil {
			return err
		}
		c := configs[roomID]
		if c == nil {
			c = &roomConfig{}
			configs[roomID] = c
		}
		c.add(rc.TimelineLimit, sel, rc.RequiredState, list)
		return nil
	}
	listNames := make([]string, 0, len(req.Lists))
	for name := range req.Lists {
		listNames = append(listNames, name)
	}
	sort.Strings(listNames)
	for _, name := range listNames {
		l := req.Lists[name]
		matched, err := s.filterCandidates(ctx, cands, l.Filters, dms, tags)
		if err != nil {
			return nil, nil, err
		}
		resp.Lists[name] = slidingListResult{Count: len(matched)}
		ranges := l.Ranges
		if l.Range != nil {
			ranges = append(ranges, l.Range)
		}
		for i, c := range matched {
			if ranges == nil || inRanges(ranges, int64(i)) {
				if err := addConfig(c.m.RoomID, l.slidingRoomConfig, name); err != nil {
					return nil, nil, err
				}
			}
		}
	}
	for roomID, sub := range req.RoomSubscriptions {
		if slices.ContainsFunc(cands, func(c *candidate) bool { return c.m.RoomID == roomID }) {
			if err := addConfig(roomID, sub, ""); err != nil {
				return nil, nil, err
			}
		}
	}
	fmt := &eventFormatter{now: s.now()}
	for _, c := range cands {
		cfg := configs[c.m.RoomID]
		if cfg == nil {
			continue
		}
		room, err := s.slidingRoom(ctx, userID, caller.DeviceID, c, cfg, prev, heads, fmt, dms, ignored)
		if err != nil {
			return nil, nil, err
		}
		next.rooms[c.m.RoomID] = sentRoom{pos: heads.Room, timelineLimit: cfg.timelineLimit, stateSig: cfg.signature()}
		if room != nil {
			resp.Rooms[c.m.RoomID] = room
		}
	}
	var joined []string
	for _, c := range cands {
		if c.m.Membership == "join" && configs[c.m.RoomID] != nil {
			joined = append(joined, c.m.RoomID)
		}
	}
	if err := s.slidingUnread(ctx, userID, heads, resp.Rooms); err != nil {
		return nil, nil, err
	}
	if err := s.slidingExtensions(ctx, caller, req, prev, heads, memberships, acct, slidingScope{joined: joined, configs: configs, ignored: ignored}, resp); err != nil {
		return nil, nil, err
	}
	if err := s.threadSubscriptionsExtension(ctx, userID, req, prev, next, resp); err != nil {
		return nil, nil, err
	}
	return resp, next, nil
}

// candidates builds the user's server-side room list, most recent first.
// Spec: MSC4186, "Lists": rooms joined, invited, knocked, banned from,
// and left rooms that this connection was sent before or that were left
// since its last pos.
func (s *Server) candidates(ctx context.Context, memberships []roomserver.MembershipEntry, prev *connState, to int64) ([]*candidate, error) {
	var cands []*candidate
	var joined []string
	for _, m := range memberships {
		if m.Forgotten {
			continue // forgotten rooms are not listed (client-server-api, "Leaving rooms")
		}
		_, wasSent := prev.rooms[m.RoomID]
		switch m.Membership {
		case "leave":
			if !wasSent && (prev.heads.Room == 0 || m.StreamPos <= prev.heads.Room) {
				continue
			}
		case "join":
			joined = append(joined, m.RoomID)
		}
		cands = append(cands, &candidate{m: m, latest: m.StreamPos, bump: m.StreamPos})
	}
	latest, err := s.rooms.LatestPositions(ctx, joined, to, nil)
	if err != nil {
		return nil, err
	}
	bump, err := s.rooms.LatestPositions(ctx, joined, to, bumpTypes)
	if err != nil {
		return nil, err
	}
	for _, c := range cands {
		if c.m.Membership == "join" {
			c.latest = max(c.latest, latest[c.m.RoomID])
			if b, ok := bump[c.m.RoomID]; ok {
				c.bump = b
			}
		}
	}
	sort.SliceStable(cands, func(i, j int) bool {
		if cands[i].latest != cands[j].latest {
			return cands[i].latest > cands[j].latest
		}
		return cands[i].m.RoomID < cands[j].m.RoomID
	})
	return cands, nil
}

func inRanges(ranges [][]int64, i int64) bool {
	for _, r := range ranges {
		if len(r) == 2 && i >= r[0] && i <= r[1] {
			return true
		}
	}
	return false
}

// directRooms reads the m.direct account data into a set of room IDs.
func directRooms(acct []clientapi.AccountData) map[string]bool {
	out := map[string]bool{}
	for _, a := range acct {
		if a.RoomID == "" && a.Type == "m.direct" {
			gjson.ParseBytes(a.Content).ForEach(func(_, rooms gjson.Result) bool {
				for _, r := range rooms.Array() {
					out[r.Str] = true
				}
				return true
			})
		}
	}
	return out
}

// roomTags reads each room's m.tag account data.
func roomTags(acct []clientapi.AccountData) map[string][]string {
	out := map[string][]string{}
	for _, a := range acct {
		if a.RoomID != "" && a.Type == "m.tag" {
			gjson.GetBytes(a.Content, "tags").ForEach(func(k, _ gjson.Result) bool {
				out[a.RoomID] = append(out[a.RoomID], k.Str)
				return true
			})
		}
	}
	return out
}

// filterCandidates applies a list's filters. Spec: MSC4186, SlidingRoomFilter.
func (s *Server) filterCandidates(ctx context.Context, cands []*candidate, f *slidingFilters, dms map[string]bool, tags map[string][]string) ([]*candidate, error) {
	if f == nil {
		return cands, nil
	}
	isInvited := f.IsInvited
	if isInvited == nil {
		isInvited = f.IsInvite
	}
	var spaceChildren map[string]bool
	if f.Spaces != nil {
		spaceChildren = map[string]bool{}
		for _, space := range f.Spaces {
			if !slices.ContainsFunc(cands, func(c *candidate) bool { return c.m.RoomID == space && c.m.Membership == "join" }) {
				continue // unknown spaces, or ones the user is not joined to, are ignored
			}
			children, err := s.rooms.IndexedCurrentState(ctx, space, []string{"m.space.child"}, false)
			if err != nil {
				return nil, err
			}
			for _, e := range children {
				if len(gjson.GetBytes(e.Content, "via").Array()) > 0 {
					spaceChildren[stateKeyOf(e)] = true
				}
			}
		}
	}
	var out []*candidate
	for _, c := range cands {
		id := c.m.RoomID
		if f.IsDM != nil && dms[id] != *f.IsDM {
			continue
		}
		if isInvited != nil && (c.m.Membership == "invite") != *isInvited {
			continue
		}
		if spaceChildren != nil && !spaceChildren[id] {
			continue
		}
		if f.NotTags != nil && slices.ContainsFunc(tags[id], func(t string) bool { return contains(f.NotTags, t) }) {
			continue
		}
		if f.Tags != nil && !slices.ContainsFunc(tags[id], func(t string) bool { return contains(f.Tags, t) }) {
			continue
		}
		if f.IsEncrypted != nil || f.RoomTypes != nil || f.NotRoomTypes != nil {
			meta, err := s.roomMeta(ctx, c)
			if err != nil {
				return nil, err
			}
			if f.IsEncrypted != nil && meta.encrypted != *f.IsEncrypted {
				continue
			}
			if f.NotRoomTypes != nil && typeListHas(f.NotRoomTypes, meta.roomType) {
				continue
			}
			if f.RoomTypes != nil && !typeListHas(f.RoomTypes, meta.roomType) {
				continue
			}
		}
		out = append(out, c)
	}
	return out, nil
}

func typeListHas(list []*string, t *string) bool {
	for _, x := range list {
		if (x == nil && t == nil) || (x != nil && t != nil && *x == *t) {
			return true
		}
	}
	return false
}

// roomMeta loads the create and encryption state of a candidate. Both
// are in the stripped state an invitee sees, so reading them is allowed
// for every membership in the list.
func (s *Server) roomMeta(ctx context.Context, c *candidate) (*roomMeta, error) {
	if c.meta != nil {
		return c.meta, nil
	}
	st, err := s.rooms.IndexedCurrentState(ctx, c.m.RoomID, []string{"m.room.create", "m.room.encryption"}, false)
	if err != nil {
		return nil, err
	}
	c.meta = &roomMeta{}
	for _, e := range st {
		switch e.Type {
		case "m.room.encryption":
			c.meta.encrypted = true
		case "m.room.create":
			if t := gjson.GetBytes(e.Content, "type"); t.Type == gjson.String {
				c.meta.roomType = &t.Str
			}
		}
	}
	return c.meta, nil
}

// slidingUnread sets notification_count and highlight_count of the
// joined rooms in a sliding sync response.
func (s *Server) slidingUnread(ctx context.Context, userID string, heads syncToken, rooms map[string]*slidingRoomResult) error {
	if s.push == nil || len(rooms) == 0 {
		return nil
	}
	roomIDs := make([]string, 0, len(rooms))
	for id, r := range rooms {
		if r.Membership == "join" {
			roomIDs = append(roomIDs, id)
		}
	}
	counts, _, err := s.push.UnreadCounts(ctx, userID, roomIDs, heads.Room, heads.Receipts)
	if err != nil {
		return err
	}
	for id, c := range counts {
		if r := rooms[id]; r != nil {
			r.NotificationCount, r.HighlightCount = c.Total.Notifications, c.Total.Highlights
		}
	}
	return nil
}
