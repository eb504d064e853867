package syncapi

import (
	"context"
	"encoding/json"
	"slices"

	"github.com/tidwall/gjson"

	"github.com/myelin-chat/myelin/clientapi"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/roomserver"
)

// roomBuilder fills the rooms section of one /sync response.
type roomBuilder struct {
	s        *Server
	req      *syncRequest
	since    syncToken // zero for an initial sync
	heads    syncToken
	fmt      *eventFormatter
	roomAcct map[string][]json.RawMessage // room account data by room; nil when there is none
	// news, for an incremental sync, maps the rooms with events since the
	// token to whether any is a state event; nil when unknown (initial
	// sync, or too many events to list).
	news map[string]bool
	// ignored are the users the syncing user ignores: their non-state
	// timeline events and their invites are left out.
	// Spec: client-server-api, "Ignoring Users".
	ignored map[string]bool
	// invitePermission is the user's MSC4155 config, read by hideInvite.
	invitePermission *clientapi.InvitePermissionConfig
	blocksAllInvites bool
	// sentWhole: some joined room goes out whole in an incremental sync
	// (joined since the token, or resynced after a partial-state join);
	// the client has no counts for it yet.
	sentWhole bool
	// batch, when set, holds the reads of the rooms sent whole, made for
	// all of them at once (initial_batch.go).
	batch *initialReads
}

func (b *roomBuilder) roomFilter() *clientapi.RoomFilter {
	if b.req.filter == nil || b.req.filter.Room == nil {
		return &clientapi.RoomFilter{}
	}
	return b.req.filter.Room
}

func (b *roomBuilder) timelineLimit() int {
	if tf := b.roomFilter().Timeline; tf != nil && tf.Limit != nil {
		return min(*tf.Limit, maxTimelineLimit)
	}
	return defaultTimelineLimit
}

// initial reports whether rooms are sent whole (no since, or full_state).
func (b *roomBuilder) initial() bool { return b.req.since == nil || b.req.fullState }

// newsScanLimit bounds how many events an incremental sync reads to find
// its rooms with news; past it every room is read.
const newsScanLimit = 1000

func (b *roomBuilder) build(ctx context.Context, memberships []roomserver.MembershipEntry, out *roomsSection) error {
	// An incremental sync skips joined rooms without any event since the
	// token (nothing for their timeline or state), so a woken request
	// costs what changed, not three queries per room the user is in.
	if !b.initial() && b.heads.Room > b.since.Room {
		rooms, complete, err := b.s.news.roomsWithEvents(ctx, b.since.Room, b.heads.Room, newsScanLimit)
		if err != nil {
			return err
		}
		if complete {
			b.news = rooms
		}
	} else if !b.initial() {
		b.news = map[string]bool{}
	}
	news := b.news
	partial, whole, err := b.partialState(ctx, memberships)
	if err != nil {
		return err
	}
	if b.initial() && !b.req.perRoom {
		if err := b.prefetchInitial(ctx, b.batchedJoinedRooms(memberships, partial)); err != nil {
			return err
		}
	}
	var joined []string
	for _, m := range memberships {
		if !roomAllowed(b.req.filter, m.RoomID) {
			continue
		}
		// newSince: the membership changed after the client's token.
		newSince := b.req.since != nil && m.StreamPos > b.since.Room
		// A forgotten room only shows its leave, to a client that has
		// not seen it yet; the spec's "Leaving rooms" would hide it
		// entirely, but then the user's other devices could not learn
		// they left (Complement: TestRoomForget "Leave for forgotten
		// room shows up in v2 incremental /sync").
		if m.Forgotten && (!newSince || b.req.fullState) {
			continue
		}
		var err error
		switch m.Membership {
		case "join":
			if partial[m.RoomID] {
				break // left out until its resync is done (partial_state.go)
			}
			// A room left out while partial comes whole once resynced.
			newSince = newSince || whole[m.RoomID]
			joined = append(joined, m.RoomID)
			if _, ok := news[m.RoomID]; news != nil && !ok && !newSince && len(b.roomAcct[m.RoomID]) == 0 {
				break // nothing new in it (its ephemeral news are added below)
			}
			var jr *joinedRoom
			b.sentWhole = b.sentWhole || newSince
			if jr, err = b.joined(ctx, m, b.initial() || newSince); err == nil && jr != nil {
				out.Join[m.RoomID] = jr
			}
		case "invite":
			if b.initial() || newSince {
				var st []strippedEvent
				var hide bool
				if st, err = b.stripped(ctx, m.RoomID); err == nil {
					hide, err = b.hideInvite(ctx, inviter(st, b.req.userID))
				}
				if err == nil && !hide {
					out.Invite[m.RoomID] = &invitedRoom{InviteState: strippedList{Events: st}}
				}
			}
		case "knock":
			if b.initial() || newSince {
				var st []strippedEvent
				if st, err = b.stripped(ctx, m.RoomID); err == nil {
					out.Knock[m.RoomID] = &knockedRoom{KnockState: strippedList{Events: st}}
				}
			}
		case "leave", "ban":
			// Rooms left since the token always appear, so the client
			// learns it left; rooms left earlier only when asked for.
			// Spec: client-server-api, "Leaving rooms" (include_leave).
			// A ban is not the user leaving: an initial sync always
			// shows it, so that a client whose first sync comes after
			// the ban learns of it (as Synapse does; Complement
			// TestUnbanViaInvite, when the ban reaches this server
			// before the user's first sync).
			if newSince || (b.initial() && (b.roomFilter().IncludeLeave || m.Membership == "ban")) {
				var lr *leftRoom
				if lr, err = b.left(ctx, m); err == nil && lr != nil {
					out.Leave[m.RoomID] = lr
				}
			}
		}
		if err != nil {
			return err
		}
	}
	return b.addEphemeral(ctx, joined, out)
}

// timeline reads and renders the latest events of a room in (from, to].
// The reads that need the events — transaction IDs, unsigned.membership,
// prev_content, bundled aggregations — and also, when not nil (the
// caller's own read of the same events), run concurrently: a woken
// request's latency is then the longest of them, not their sum.
// joinedAtTo tells that the user's membership as of to is join
// (roomserver.RecentRequest.JoinedAtTo).
func (b *roomBuilder) timeline(ctx context.Context, roomID string, from, to int64, joinedAtTo bool,
	also func(context.Context, []*roomserver.Event) error) (timeline, []*roomserver.Event, *roomserver.RecentResponse, error) {
	limit := b.timelineLimit()
	rreq := roomserver.RecentRequest{
		UserID: b.req.userID, RoomID: roomID, From: from, To: to, Limit: max(limit, 1), JoinedAtTo: joinedAtTo}
	var rr *roomserver.RecentResponse
	var memberships map[string]string // unsigned.membership, when read with the events
	var err error
	if b.s.timelines != nil && b.req.since != nil && joinedAtTo {
		// A joined room of an incremental sync: its timeline ends at the
		// room head, where the long polls woken by one message all end
		// theirs; they read it together (timelinebatch.go).
		// Only the events this request shows get their membership
		// read (the filter and ignored senders as below).
		// (filterEvents and withoutIgnored for one event, without a
		// slice for it: this runs for every event of every listener.)
		tf := b.roomFilter().Timeline
		shown := func(e *roomserver.Event) bool {
			return (tf == nil || roomEventFilterAllows(tf, e)) && (e.StateKey != nil || !b.ignored[e.Sender])
		}
		rr, memberships, err = b.s.timelines.recent(ctx, rreq, shown)
	} else {
		rr, err = b.s.rooms.RecentEvents(ctx, rreq)
	}
	if err != nil {
		return timeline{}, nil, nil, err
	}
	if limit == 0 {
		rr = emptyTimeline(rr)
	}
	evs := b.withoutIgnored(filterEvents(b.roomFilter().Timeline, rr.Events))
	var own, ids, stateIDs []string
	for _, e := range evs {
		if e.Sender == b.req.userID {
			own = append(own, e.EventID)
		}
		ids = append(ids, e.EventID)
		if e.StateKey != nil {
			stateIDs = append(stateIDs, e.EventID)
		}
	}
	var reads concurrently
	var txnIDs map[string]string
	var prevStates map[string]*roomserver.PrevState
	var relations map[string]json.RawMessage
	if len(own) > 0 {
		reads.do(func(ctx context.Context) (err error) {
			txnIDs, err = b.s.rooms.TxnIDs(ctx, roomID, b.req.userID, b.req.deviceID, own)
			return err
		})
	}
	if memberships != nil {
		// Read with the events for every event the user may see: only
		// those of the timeline carry it (the state section renders
		// with the same formatter, and MembershipsAt is asked for ids).
		memberships = onlyKeys(memberships, ids)
	} else if len(ids) > 0 {
		// Spec: unsigned.membership, the caller's membership at each event.
		// Complement: TestMembershipOnEvents.
		reads.do(func(ctx context.Context) (err error) {
			memberships, err = b.s.rooms.MembershipsAt(ctx, b.req.userID, ids)
			return err
		})
	}
	if len(stateIDs) > 0 {
		// Spec: unsigned.prev_content of the timeline's state events.
		reads.do(func(ctx context.Context) (err error) {
			prevStates, err = b.s.rooms.PrevStates(ctx, stateIDs)
			return err
		})
	}
	// A limited timeline's events carry their bundled aggregations: the
	// client has not seen the child events that the gap hides.
	// Spec: client-server-api, "Aggregations of child events" (GET /sync
	// when the relevant section has a limited value).
	if rr.Limited && b.s.aggs != nil && !b.fmt.federation && len(evs) > 0 {
		reads.do(func(ctx context.Context) (err error) {
			relations, err = b.s.aggs.BundledAggregations(ctx, b.req.userID, b.req.deviceID, evs)
			return err
		})
	}
	if also != nil {
		reads.do(func(ctx context.Context) error { return also(ctx, evs) })
	}
	if err := reads.wait(ctx); err != nil {
		return timeline{}, nil, nil, err
	}
	b.fmt.txnIDs, b.fmt.memberships, b.fmt.prevStates, b.fmt.relations = txnIDs, memberships, prevStates, relations
	return timeline{Events: nonNil(b.fmt.formatAll(evs)), Limited: rr.Limited, PrevBatch: rr.PrevBatch,
		marshalled: b.fmt.marshalled()}, evs, rr, nil
}

// emptyTimeline turns the one-event answer read for a timeline limit of 0
// into no events: limited when there was an event, with a prev_batch
// that pages back from just after it, so /messages returns it first.
// The room's state then reaches the end of the window. Complement:
// TestArchivedRoomsHistory "timeline is empty".
func emptyTimeline(rr *roomserver.RecentResponse) *roomserver.RecentResponse {
	if len(rr.Events) == 0 {
		return &roomserver.RecentResponse{Limited: rr.Limited, PrevBatch: rr.PrevBatch}
	}
	last := rr.Events[len(rr.Events)-1]
	return &roomserver.RecentResponse{Limited: true, PrevBatch: roomserver.TopologicalToken(last.Depth, last.StreamPos+1)}
}

func nonNil(evs []json.RawMessage) []json.RawMessage {
	if evs == nil {
		return []json.RawMessage{}
	}
	return evs
}

// joined builds a joined room's entry; nil when an incremental sync has
// nothing new for it. full sends the room whole (initial sync,
// full_state, or joined since the token).
func (b *roomBuilder) joined(ctx context.Context, m roomserver.MembershipEntry, full bool) (*joinedRoom, error) {
	if b.batch != nil && full && b.batch.recent[m.RoomID] != nil {
		return b.batchedJoined(ctx, m)
	}
	from := b.since.Room
	if full {
		from = 0
	}
	lazy := b.lazy()
	// base is the state the client must learn: all current state for a
	// full room, else what changed since the token and is still current.
	// It is read while the timeline is.
	var base []*roomserver.Event
	var baseRead concurrently
	switch {
	case full:
		baseRead.do(func(ctx context.Context) (err error) {
			base, err = b.s.rooms.IndexedCurrentState(ctx, m.RoomID, nil, lazy)
			return err
		})
	case b.news != nil && !b.news[m.RoomID]:
		// No state event in the room since the token: no state delta.
	default:
		baseRead.do(func(ctx context.Context) (err error) {
			base, err = b.s.rooms.StateDelta(ctx, m.RoomID, b.since.Room, b.heads.Room)
			return err
		})
	}
	baseRead.start(ctx)
	var members []*roomserver.Event // the lazy members read with the timeline
	var readMembers func(context.Context, []*roomserver.Event) error
	if lazy {
		readMembers = func(ctx context.Context, tl []*roomserver.Event) (err error) {
			members, err = b.lazyMemberEvents(ctx, m.RoomID, tl)
			return err
		}
	}
	// The memberships are exact as of the room head (heads), which is
	// where this timeline ends.
	tl, tlEvents, _, err := b.timeline(ctx, m.RoomID, from, b.heads.Room, m.Membership == "join", readMembers)
	if werr := baseRead.wait(ctx); err == nil {
		err = werr
	}
	if err != nil {
		return nil, err
	}
	return b.joinedFrom(ctx, m.RoomID, full, base, tl, tlEvents, members)
}

// batchedJoined is joined for a room sent whole whose reads
// prefetchInitial made.
func (b *roomBuilder) batchedJoined(ctx context.Context, m roomserver.MembershipEntry) (*joinedRoom, error) {
	tl, tlEvents := b.batchedTimeline(m.RoomID)
	return b.joinedFrom(ctx, m.RoomID, true, b.batch.state[m.RoomID], tl, tlEvents, b.batch.members[m.RoomID])
}

// joinedFrom builds a joined room's entry from its reads: base, the
// state the client must learn (before upTo), the rendered timeline and
// its events, and the lazy-loaded members.
func (b *roomBuilder) joinedFrom(ctx context.Context, roomID string, full bool, base []*roomserver.Event,
	tl timeline, tlEvents, members []*roomserver.Event) (*joinedRoom, error) {
	lazy := b.lazy()
	base = upTo(base, b.heads.Room)
	var state []*roomserver.Event
	if b.req.stateAfter != "" {
		// MSC4222: state_after is the state at the end of the timeline.
		state = base
	} else {
		// The legacy section is the state before the timeline: what the
		// timeline itself carries is left out of it.
		state = minusEvents(base, tlEvents)
	}
	state = b.filterState(state)
	if lazy {
		state = b.addLazyMembers(roomID, state, tlEvents, members)
	}
	acct := b.roomAcct[roomID]
	if !full && len(tl.Events) == 0 && len(state) == 0 && len(acct) == 0 {
		return nil, nil
	}
	jr := &joinedRoom{
		Timeline:    tl,
		Ephemeral:   events(nil),
		AccountData: events(acct),
	}
	b.setState(&jr.State, &jr.StateAfter, &jr.StateAfterUnstable, state)
	if full || hasMember(tlEvents) || hasMember(base) {
		var err error
		if jr.Summary, err = b.summary(ctx, roomID); err != nil {
			return nil, err
		}
	}
	return jr, nil
}

// setState puts the state events under the field the request asked for.
func (b *roomBuilder) setState(legacy, stable, unstable **eventList, state []*roomserver.Event) {
	list := events(b.fmt.formatAll(state))
	list.marshalled = b.fmt.marshalled()
	switch b.req.stateAfter {
	case "":
		*legacy = &list
	case "state_after":
		*stable = &list
	default:
		*unstable = &list
	}
}

func (b *roomBuilder) lazy() bool {
	sf := b.roomFilter().State
	return sf != nil && sf.LazyLoadMembers
}

func (b *roomBuilder) filterState(state []*roomserver.Event) []*roomserver.Event {
	sf := b.roomFilter().State
	if sf == nil {
		return state
	}
	return filterEvents(sf, state)
}

// lazyMemberEvents reads the current membership events of the timeline's
// senders and the user's own (for senders whose membership is not in
// the room's current state, the one their event was authorised by).
func (b *roomBuilder) lazyMemberEvents(ctx context.Context, roomID string, tl []*roomserver.Event) ([]*roomserver.Event, error) {
	members, err := b.s.memberReads.members(ctx, roomID, lazyMemberKeys(b.req.userID, tl))
	if err != nil {
		return nil, err
	}
	return b.membersFromAuth(ctx, members, tl)
}

// addLazyMembers adds members (lazyMemberEvents), leaving out those this
// device was sent before unless include_redundant_members is set.
// Spec: client-server-api, "Lazy-loading room members".
func (b *roomBuilder) addLazyMembers(roomID string, state, tl, members []*roomserver.Event) []*roomserver.Event {
	redundantOK := b.roomFilter().State.IncludeRedundantMembers
	inTimeline := map[string]bool{}
	if b.req.stateAfter == "" {
		for _, e := range tl {
			inTimeline[e.EventID] = true
		}
	}
	cacheKey := b.req.userID + "|" + b.req.deviceID + "|" + roomID
	for _, e := range upTo(members, b.heads.Room) {
		if inTimeline[e.EventID] || containsEvent(state, e.EventID) {
			continue
		}
		if !redundantOK && !b.initial() && b.s.members.sent(cacheKey, stateKeyOf(e), e.EventID) {
			continue
		}
		state = append(state, e)
	}
	for _, e := range state {
		if e.Type == "m.room.member" {
			b.s.members.remember(cacheKey, stateKeyOf(e), e.EventID)
		}
	}
	return state
}

// summary builds the room summary. Spec: client-server-api, RoomSummary:
// heroes are up to 5 other members, joined and invited first.
func (b *roomBuilder) summary(ctx context.Context, roomID string) (*roomSummary, error) {
	var ms *roomserver.MemberSummary
	if b.batch != nil {
		ms = b.batch.summaries[roomID]
	}
	if ms == nil {
		var err error
		if ms, err = b.s.rooms.RoomMemberSummary(ctx, roomID); err != nil {
			return nil, err
		}
	}
	sum := &roomSummary{Joined: &ms.Joined, Invited: &ms.Invited, Heroes: heroes(ms, b.req.userID)}
	return sum, nil
}

func heroes(ms *roomserver.MemberSummary, self string) []string {
	out := []string{}
	for _, h := range ms.Heroes {
		if h != self && len(out) < 5 {
			out = append(out, h)
		}
	}
	return out
}

// stripped returns the stripped state an invitee or knocker sees,
// including their own membership event.
func (b *roomBuilder) stripped(ctx context.Context, roomID string) ([]strippedEvent, error) {
	st, err := b.s.rooms.IndexedCurrentState(ctx, roomID, strippedStateTypes, false)
	if err != nil {
		return nil, err
	}
	own, err := b.s.rooms.IndexedStateKeys(ctx, roomID, "m.room.member", []string{b.req.userID})
	if err != nil {
		return nil, err
	}
	out := []strippedEvent{}
	for _, e := range append(st, own...) {
		out = append(out, strip(e))
	}
	return out, nil
}

// left builds a left (or banned) room: the timeline up to the leave and
// the state at it.
func (b *roomBuilder) left(ctx context.Context, m roomserver.MembershipEntry) (*leftRoom, error) {
	from := b.since.Room
	if b.initial() {
		from = 0
	}
	tl, tlEvents, _, err := b.timeline(ctx, m.RoomID, from, m.StreamPos, false, nil)
	if err != nil {
		return nil, err
	}
	var base []*roomserver.Event
	at, err := b.s.rooms.StateAt(ctx, b.req.userID, m.EventID)
	switch {
	case mxerr.Is(err, mxerr.NotFound):
		// Banned without ever joining: nothing of the room is visible.
	case err != nil:
		return nil, err
	default:
		for _, e := range at.After {
			if from == 0 || e.StreamPos > from {
				base = append(base, e)
			}
		}
	}
	state := base
	if b.req.stateAfter == "" {
		state = minusEvents(base, tlEvents)
	}
	lr := &leftRoom{Timeline: tl, AccountData: events(b.roomAcct[m.RoomID])}
	b.setState(&lr.State, &lr.StateAfter, &lr.StateAfterUnstable, b.filterState(state))
	return lr, nil
}

// addEphemeral adds typing and receipts to joined rooms, adding rooms
// that have only ephemeral news.
func (b *roomBuilder) addEphemeral(ctx context.Context, joined []string, out *roomsSection) error {
	if b.s.eph == nil || len(joined) == 0 {
		return nil
	}
	var since EphemeralPositions
	if !b.initial() {
		since = EphemeralPositions{Receipts: b.since.Receipts, Typing: b.since.Typing, Presence: b.since.Presence}
	}
	to := EphemeralPositions{Receipts: b.heads.Receipts, Typing: b.heads.Typing, Presence: b.heads.Presence}
	if !b.initial() && since == to {
		return nil // the range (since, to] is empty: no typing or receipt news
	}
	byRoom, err := b.s.eph.RoomEphemeral(ctx, b.req.userID, joined, since, to)
	if err != nil {
		return err
	}
	var f *clientapi.RoomEventFilter
	if b.req.filter != nil && b.req.filter.Room != nil {
		f = b.req.filter.Room.Ephemeral
	}
	for roomID, evs := range byRoom {
		evs = withoutIgnoredEphemeral(ephemeralFilter(f, roomID, evs), b.ignored)
		if len(evs) == 0 || !slices.Contains(joined, roomID) {
			continue
		}
		jr := out.Join[roomID]
		if jr == nil {
			jr = &joinedRoom{Timeline: timeline{Events: []json.RawMessage{}}, Ephemeral: events(nil), AccountData: events(nil)}
			out.Join[roomID] = jr
		}
		jr.Ephemeral = events(evs)
	}
	return nil
}

// ephemeralFilter applies a filter's room.ephemeral types, not_types,
// rooms and not_rooms to a room's ephemeral events. Senders do not
// apply: m.typing and m.receipt have none.
func ephemeralFilter(f *clientapi.RoomEventFilter, roomID string, evs []json.RawMessage) []json.RawMessage {
	if f == nil {
		return evs
	}
	if contains(f.NotRooms, roomID) || (f.Rooms != nil && !contains(f.Rooms, roomID)) {
		return nil
	}
	var out []json.RawMessage
	for _, e := range evs {
		t := gjson.GetBytes(e, "type").Str
		if !matchAnyType(f.NotTypes, t) && (f.Types == nil || matchAnyType(f.Types, t)) {
			out = append(out, e)
		}
	}
	return out
}

// withoutIgnored drops the non-state events of ignored senders; state
// events stay, as the spec excepts them.
func (b *roomBuilder) withoutIgnored(evs []*roomserver.Event) []*roomserver.Event {
	return withoutIgnoredSenders(evs, b.ignored)
}

// inviter is the sender of userID's member event in stripped state.
func inviter(st []strippedEvent, userID string) string {
	for _, e := range st {
		if e.Type == "m.room.member" && e.StateKey == userID {
			return e.Sender
		}
	}
	return ""
}

// upTo drops events past position to (committed after the heads were read).
func upTo(evs []*roomserver.Event, to int64) []*roomserver.Event {
	out := evs[:0:0]
	for _, e := range evs {
		if e.StreamPos <= to {
			out = append(out, e)
		}
	}
	return out
}

func minusEvents(evs, drop []*roomserver.Event) []*roomserver.Event {
	if len(drop) == 0 {
		return evs
	}
	out := evs[:0:0]
	for _, e := range evs {
		if !containsEvent(drop, e.EventID) {
			out = append(out, e)
		}
	}
	return out
}

func containsEvent(evs []*roomserver.Event, id string) bool {
	for _, e := range evs {
		if e.EventID == id {
			return true
		}
	}
	return false
}

func hasMember(evs []*roomserver.Event) bool {
	for _, e := range evs {
		if e.Type == "m.room.member" {
			return true
		}
	}
	return false
}

// onlyKeys is the entries of m whose key is one of keys.
func onlyKeys(m map[string]string, keys []string) map[string]string {
	if len(m) <= len(keys) && len(keys) <= 8 {
		// Usually m holds keys' entries only (a grouped read answers the
		// events shown): it is then the answer, not copied. (Checked for
		// a short timeline only, as a woken one is.)
		all := true
		for k := range m {
			if !slices.Contains(keys, k) {
				all = false
				break
			}
		}
		if all {
			return m
		}
	}
	out := make(map[string]string, len(keys))
	for _, k := range keys {
		if v, ok := m[k]; ok {
			out[k] = v
		}
	}
	return out
}
