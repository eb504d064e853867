package syncapi

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tidwall/gjson"

	"github.com/myelin-chat/myelin/clientapi"
	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/roomserver"
)

// Limits on a sync request.
const (
	defaultTimelineLimit = 10
	maxTimelineLimit     = 100
	maxTimeout           = 5 * time.Minute
)

// syncRequest is a parsed GET /sync.
type syncRequest struct {
	userID, deviceID string
	since            *syncToken // nil: initial sync
	filter           *clientapi.Filter
	fullState        bool
	timeout          time.Duration
	// stateAfter is the field name state_after goes under ("state_after"
	// or the MSC4222 unstable name), or "" for the legacy state section.
	stateAfter string
	// acked is set once the token's to-device position has been
	// acknowledged, so a long-poll does it once.
	acked bool
	// perRoom makes a sync that sends rooms whole read each room on its
	// own instead of all at once (initial_batch.go): the reference the
	// batched reads are tested against.
	perRoom bool
}

// The /sync response. Spec: client-server-api, "GET /_matrix/client/v3/sync".
type syncResponse struct {
	NextBatch        string         `json:"next_batch"`
	Rooms            roomsSection   `json:"rooms"`
	AccountData      eventList      `json:"account_data"`
	Presence         eventList      `json:"presence"`
	ToDevice         eventList      `json:"to_device"`
	DeviceLists      DeviceLists    `json:"device_lists"`
	OneTimeKeysCount map[string]int `json:"device_one_time_keys_count"`
	FallbackKeys     []string       `json:"device_unused_fallback_key_types"`
}

type roomsSection struct {
	Join   map[string]*joinedRoom  `json:"join"`
	Invite map[string]*invitedRoom `json:"invite,omitempty"`
	Knock  map[string]*knockedRoom `json:"knock"`
	Leave  map[string]*leftRoom    `json:"leave"`
}

type eventList struct {
	Events []json.RawMessage `json:"events"`
	// marshalled says every event of Events is already what json.Marshal
	// makes of it (the event formatter's client-format output, see
	// eventFormatter.marshalled): appendResponse copies them as they are.
	marshalled bool
}

func events(evs []json.RawMessage) eventList {
	if evs == nil {
		evs = []json.RawMessage{}
	}
	return eventList{Events: evs}
}

type timeline struct {
	Events    []json.RawMessage `json:"events"`
	Limited   bool              `json:"limited"`
	PrevBatch string            `json:"prev_batch,omitempty"`
	// marshalled is eventList.marshalled for Events.
	marshalled bool
}

type unreadCounts struct {
	NotificationCount int `json:"notification_count"`
	HighlightCount    int `json:"highlight_count"`
}

type roomSummary struct {
	Heroes  []string `json:"m.heroes,omitempty"`
	Joined  *int     `json:"m.joined_member_count,omitempty"`
	Invited *int     `json:"m.invited_member_count,omitempty"`
}

type joinedRoom struct {
	Summary            *roomSummary `json:"summary,omitempty"`
	State              *eventList   `json:"state,omitempty"`
	StateAfter         *eventList   `json:"state_after,omitempty"`
	StateAfterUnstable *eventList   `json:"org.matrix.msc4222.state_after,omitempty"`
	Timeline           timeline     `json:"timeline"`
	Ephemeral          eventList    `json:"ephemeral"`
	AccountData        eventList    `json:"account_data"`
	// Unread counts come from Deps.Push (fillUnread). An incremental
	// sync leaves them out (they are optional) for a room whose counts
	// cannot have changed: no event in it and no receipt since the
	// token, or (a long poll) nothing counted past the token's Unread.
	UnreadNotifications       *unreadCounts           `json:"unread_notifications,omitempty"`
	UnreadThreadNotifications map[string]unreadCounts `json:"unread_thread_notifications,omitempty"`
}

type strippedList struct {
	Events []strippedEvent `json:"events"`
}

type invitedRoom struct {
	InviteState strippedList `json:"invite_state"`
}

type knockedRoom struct {
	KnockState strippedList `json:"knock_state"`
}

type leftRoom struct {
	State              *eventList `json:"state,omitempty"`
	StateAfter         *eventList `json:"state_after,omitempty"`
	StateAfterUnstable *eventList `json:"org.matrix.msc4222.state_after,omitempty"`
	Timeline           timeline   `json:"timeline"`
	AccountData        eventList  `json:"account_data"`
}

// empty reports whether the response carries nothing new, so a
// long-polling request should keep waiting.
func (r *syncResponse) empty() bool {
	return len(r.Rooms.Join) == 0 && len(r.Rooms.Invite) == 0 && len(r.Rooms.Knock) == 0 &&
		len(r.Rooms.Leave) == 0 && len(r.AccountData.Events) == 0 && len(r.Presence.Events) == 0 &&
		len(r.ToDevice.Events) == 0 && len(r.DeviceLists.Changed) == 0 && len(r.DeviceLists.Left) == 0
}

// sync answers GET /_matrix/client/v3/sync.
// Spec: client-server-api, "GET /_matrix/client/v3/sync".
func (s *Server) sync(w http.ResponseWriter, r *http.Request) error {
	// The query is parsed once: its filter parameter, often a long inline
	// filter, is unescaped with it.
	q := r.URL.Query()
	req, err := s.parseSyncRequest(r, q)
	if err != nil {
		return err
	}
	if p := q.Get("set_presence"); p != "" {
		if err := s.setPresence(r.Context(), req.userID, p); err != nil {
			return err
		}
	} else if err := s.setPresence(r.Context(), req.userID, "online"); err != nil {
		return err
	}
	resp, err := s.syncWait(r.Context(), req)
	if err != nil {
		return err
	}
	if (req.since == nil || req.fullState) && (req.filter == nil || req.filter.EventFormat != "federation") {
		// A response that sends rooms whole is mostly events the
		// formatter rendered in the client format: syncBody copies
		// them once, straight to the connection, rather than having
		// json.Marshal scan them again into a buffer of the whole body.
		body, err := newSyncBody(resp)
		if err != nil {
			return err
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(body.size))
		w.WriteHeader(http.StatusOK)
		_ = body.writeTo(w) // the client has gone: nothing to tell it
		return nil
	}
	return writeResponse(w, resp)
}

// setPresence validates set_presence and passes it on. Spec: the values
// are online, offline and unavailable; others are M_INVALID_PARAM.
func (s *Server) setPresence(ctx context.Context, userID, presence string) error {
	switch presence {
	case "online", "offline", "unavailable":
	default:
		return mxerr.New(mxerr.InvalidParam, "set_presence must be online, offline or unavailable")
	}
	if s.eph == nil {
		return nil
	}
	return s.eph.SetPresence(ctx, userID, presence)
}

// parseSyncRequest reads the request's parameters from q, its parsed
// query.
func (s *Server) parseSyncRequest(r *http.Request, q url.Values) (*syncRequest, error) {
	caller := authn.FromContext(r.Context())
	req := &syncRequest{userID: caller.UserID, deviceID: caller.DeviceID}
	if v := q.Get("since"); v != "" {
		t, err := parseSyncToken(v)
		if err != nil {
			return nil, err
		}
		req.since = &t
	}
	if v := q.Get("timeout"); v != "" {
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil || ms < 0 {
			return nil, mxerr.New(mxerr.InvalidParam, "timeout must be a non-negative integer")
		}
		req.timeout = min(time.Duration(ms)*time.Millisecond, maxTimeout)
	}
	var err error
	if req.fullState, err = boolParam(q.Get("full_state"), "full_state"); err != nil {
		return nil, err
	}
	for _, name := range []string{"use_state_after", "org.matrix.msc4222.use_state_after"} {
		on, err := boolParam(q.Get(name), name)
		if err != nil {
			return nil, err
		}
		if on {
			req.stateAfter = "state_after"
			if strings.HasPrefix(name, "org.") {
				req.stateAfter = "org.matrix.msc4222.state_after"
			}
		}
	}
	if v := q.Get("filter"); v != "" {
		if strings.HasPrefix(strings.TrimSpace(v), "{") {
			req.filter, err = s.inline.parse(v)
		} else {
			req.filter, err = s.storedFilters.Filter(r.Context(), req.userID, v)
		}
		if err != nil {
			return nil, err
		}
	}
	return req, nil
}

func boolParam(v, name string) (bool, error) {
	switch v {
	case "", "false":
		return false, nil
	case "true":
		return true, nil
	}
	return false, mxerr.New(mxerr.InvalidParam, "%s must be true or false", name)
}

// syncWait computes the response and, for an incremental sync with a
// timeout and nothing new, waits for the waker and computes again, until
// something arrives or the timeout (or the request) ends.
func (s *Server) syncWait(ctx context.Context, req *syncRequest) (*syncResponse, error) {
	if req.since == nil || req.timeout <= 0 || req.fullState {
		return s.compute(ctx, req)
	}
	// The registration's memberships may come from the memo: one that
	// changed after the waker's last window is not in it, but that
	// window's dispatch wakes this request through its user.
	memberships, err := s.userMemberships(ctx, req.userID, true, -1)
	if err != nil {
		return nil, err
	}
	roomIDs := make([]string, len(memberships))
	for i, m := range memberships {
		roomIDs[i] = m.RoomID
	}
	wt := s.waker.registerFiltered(req.userID, roomIDs, req.wantsPresence())
	defer s.waker.unregister(wt)
	deadline := time.NewTimer(req.timeout)
	defer deadline.Stop()
	resynced := s.awaitResyncs(ctx, req, roomIDs) // partial_state.go
	// A request whose token is at every head has nothing to compute: it
	// waits at once, and computes when woken (or at the timeout, for the
	// empty response with its key counts).
	idle, err := s.unchangedSince(ctx, req, memberships)
	if err != nil {
		return nil, err
	}
	var resp *syncResponse
	for {
		wt.parked.Store(false)
		if !idle {
			if resp, err = s.compute(ctx, req); err != nil || !resp.empty() {
				return resp, err
			}
		}
		idle = false
		wt.parked.Store(true)
		select {
		case <-resynced:
			resynced = nil
			continue
		case <-wt.wake:
			continue
		case <-deadline.C:
		case <-ctx.Done():
		}
		if resp == nil {
			return s.compute(ctx, req)
		}
		return resp, nil
	}
}

// unchangedSince reports whether no stream has moved past the token of
// an incremental request: the shared heads, with the room head raised to
// the user's newest membership, equal the token, so compute would find
// nothing. Called after the waiter is registered, so a commit it misses
// wakes the waiter. False when the account data head cannot be read
// alone (sync then cannot tell without reading the user's account data).
func (s *Server) unchangedSince(ctx context.Context, req *syncRequest, memberships []roomserver.MembershipEntry) (bool, error) {
	if s.acctHead == nil {
		return false, nil
	}
	h, err := s.sharedHeads.get(ctx, false, s.readSharedHeads)
	if err != nil {
		return false, err
	}
	for _, m := range memberships {
		h.Room = max(h.Room, m.StreamPos)
	}
	return h == *req.since, nil
}

// heads reads every stream's head except account data (which comes with
// its read) and the user's memberships. The room head is raised to the
// newest membership seen: positions commit in order, so everything up to
// it is readable, and the memberships are then exact as of the head.
// The heads shared by all users may come from s.sharedHeads (see
// headsCache); with memo, the memberships from the waker's memo when it
// holds them exact at the room head (membershipmemo.go: only for an
// incremental sync without full_state).
func (s *Server) heads(ctx context.Context, userID string, memo bool) (syncToken, []roomserver.MembershipEntry, error) {
	return s.readHeads(ctx, userID, false, memo)
}

// readHeads is heads; fresh bypasses the shared heads cache.
func (s *Server) readHeads(ctx context.Context, userID string, fresh, memo bool) (syncToken, []roomserver.MembershipEntry, error) {
	h, err := s.sharedHeads.get(ctx, fresh, s.readSharedHeads)
	if err != nil {
		return h, nil, err
	}
	memberships, err := s.userMemberships(ctx, userID, memo, h.Room)
	if err != nil {
		return h, nil, err
	}
	for _, m := range memberships {
		h.Room = max(h.Room, m.StreamPos)
	}
	return h, memberships, nil
}

// accountDataSince is AccountDataSince for a sync request. An
// incremental sync whose token is at the account data head read with
// the shared heads has no account data news (nothing in (since, head])
// and skips the read; the head stays the token's.
func (s *Server) accountDataSince(ctx context.Context, req *syncRequest, since int64, heads syncToken) ([]clientapi.AccountData, int64, error) {
	if req.since != nil && s.acctHead != nil && heads.AccountData == since {
		return nil, since, nil
	}
	return s.acct.AccountDataSince(ctx, req.userID, since)
}

// readSharedHeads reads the heads that are the same for every user.
func (s *Server) readSharedHeads(ctx context.Context) (syncToken, error) {
	var h syncToken
	var err error
	// The counts position first: the consumer only processes committed
	// events, so read before the room head it never passes it.
	var counted int64
	if s.push != nil {
		if counted, err = s.push.CountsPosition(ctx); err != nil {
			return h, err
		}
	}
	if h.Room, err = s.rooms.StreamPosition(ctx); err != nil {
		return h, err
	}
	// Not capped at Room here: sharedHeads keeps the position as read
	// (it may be past Room, see headsCache.counted) and caps Unread.
	h.Unread = counted
	if s.eph != nil {
		p, err := s.eph.EphemeralHeads(ctx)
		if err != nil {
			return h, err
		}
		h.Receipts, h.Typing, h.Presence = p.Receipts, p.Typing, p.Presence
	}
	if s.e2ee != nil {
		if h.ToDevice, h.DeviceLists, err = s.e2ee.E2EEHeads(ctx); err != nil {
			return h, err
		}
	}
	if s.invites != nil {
		if h.RemoteInvites, err = s.invites.RemoteInviteHead(ctx); err != nil {
			return h, err
		}
	}
	if s.acctHead != nil {
		if h.AccountData, err = s.acctHead.AccountDataHead(ctx); err != nil {
			return h, err
		}
	}
	return h, nil
}

// typingFromOtherProcess raises heads' typing position to since's when
// since holds one that the shared typing counter gave out but this
// process has not applied yet (SharedTyping): the token comes from a
// process of the deployment that applied more. The response then
// reports no typing change up to it (the client saw those elsewhere; this
// process's sets at it are the same) and keeps the position, so the
// changes this process applies up to it are not sent again, and those
// past it are sent once.
//
// When the counter cannot be read (Redis unreachable), the position can
// be neither checked nor applied (this process's reader is cut off too),
// so the response is as of this process's typing position: since's is
// lowered to it (no typing change is reported for this response) and the
// token handed back carries it, never a position this process has not
// applied. A position that was never given out (a forged token) is
// then not taken as caught up with, which would hide every typing
// change up to it; and once the process reads the log again, the next
// request sends the rooms whose typing changed after its position, each
// with its whole typing set (m.typing lists every user typing), so a
// change the client saw elsewhere comes again, unchanged, and none is
// skipped.
func (s *Server) typingFromOtherProcess(ctx context.Context, since, heads *syncToken) {
	if since.Typing <= heads.Typing {
		return
	}
	st, ok := s.eph.(SharedTyping)
	if !ok {
		return
	}
	issued, err := st.TypingIssued(ctx, since.Typing)
	if err != nil {
		s.log.Warn("cannot read the shared typing position; answering as of this process's", "err", err)
		since.Typing = heads.Typing
		return
	}
	if issued {
		heads.Typing = since.Typing
	}
}

// compute builds one response from since (zero for an initial sync) up
// to the current heads.
func (s *Server) compute(ctx context.Context, req *syncRequest) (*syncResponse, error) {
	// The device's key counts depend on nothing else in the response:
	// they are read while the rest is.
	// One variable for the read and its results, which the read's
	// goroutine shares: one allocation rather than one for each.
	var keys struct {
		read     concurrently
		otk      map[string]int
		fallback []string
	}
	if s.e2ee != nil {
		keys.read.do(func(ctx context.Context) (err error) {
			if s.keyCounts != nil {
				// Requests computed together read their counts together.
				keys.otk, keys.fallback, err = s.keyCounts.keyCounts(ctx, req.userID, req.deviceID)
				return err
			}
			keys.otk, keys.fallback, err = s.e2ee.KeyCounts(ctx, req.userID, req.deviceID)
			return err
		})
		keys.read.start(ctx)
		// On an early return the read still ends before compute does
		// (its error is then not news); on the normal path wait below
		// has already collected it and this returns at once.
		defer func() { _ = keys.read.wait(ctx) }()
	}
	heads, memberships, err := s.heads(ctx, req.userID, req.since != nil && !req.fullState)
	if err != nil {
		return nil, err
	}
	var since syncToken
	if req.since != nil {
		since = *req.since
	}
	acct, acctHead, err := s.accountDataSince(ctx, req, since.AccountData, heads)
	if err != nil {
		return nil, err
	}
	heads.AccountData = acctHead
	ignored, err := s.ignoredUsers(ctx, req.userID, acct, since.AccountData, acctHead)
	if err != nil {
		return nil, err
	}
	if req.since == nil {
		if acct, err = s.withPushRules(ctx, req.userID, acct); err != nil {
			return nil, err
		}
	}
	if req.since != nil {
		s.typingFromOtherProcess(ctx, &since, &heads)
	}
	if req.since != nil && since.checkNotFuture(heads) != nil {
		// The shared heads may trail a token issued from a fresher read
		// in the same notification generation: read them afresh before
		// calling the token one this server never issued.
		fresh, freshMemberships, err := s.readHeads(ctx, req.userID, true, false)
		if err != nil {
			return nil, err
		}
		fresh.AccountData = heads.AccountData
		s.typingFromOtherProcess(ctx, &since, &fresh)
		if err := since.checkNotFuture(fresh); err != nil {
			return nil, err
		}
		heads, memberships = fresh, freshMemberships
	}
	resp := &syncResponse{
		Rooms: roomsSection{Join: map[string]*joinedRoom{}, Invite: map[string]*invitedRoom{},
			Knock: map[string]*knockedRoom{}, Leave: map[string]*leftRoom{}},
		AccountData: events(nil), Presence: events(nil), ToDevice: events(nil),
		DeviceLists: DeviceLists{Changed: []string{}, Left: []string{}}, OneTimeKeysCount: map[string]int{},
		FallbackKeys: []string{},
	}
	rb := &roomBuilder{s: s, req: req, since: since, heads: heads,
		fmt:     &eventFormatter{now: s.now(), federation: req.filter != nil && req.filter.EventFormat == "federation"},
		ignored: ignored}
	for _, a := range acct {
		ev, _ := json.Marshal(map[string]any{"type": a.Type, "content": a.Content})
		if a.RoomID == "" {
			if req.filter == nil || eventFilterAllows(req.filter.AccountData, a.Type, req.userID) {
				resp.AccountData.Events = append(resp.AccountData.Events, ev)
			}
		} else if req.filter == nil || req.filter.Room == nil ||
			roomEventFilterAllows(req.filter.Room.AccountData, &roomserver.Event{RoomID: a.RoomID, Type: a.Type, Sender: req.userID}) {
			if rb.roomAcct == nil {
				rb.roomAcct = map[string][]json.RawMessage{}
			}
			rb.roomAcct[a.RoomID] = append(rb.roomAcct[a.RoomID], ev)
		}
	}
	if err := rb.build(ctx, memberships, &resp.Rooms); err != nil {
		return nil, err
	}
	if err := s.fillUnread(ctx, rb, memberships, resp.Rooms.Join); err != nil {
		return nil, err
	}
	heads.Unread = rb.heads.Unread
	if err := rb.addRemoteInvites(ctx, memberships, &resp.Rooms); err != nil {
		return nil, err
	}
	if err := s.addPresenceAndE2EE(ctx, req, since, &heads, memberships, rb.membershipMoved(memberships), resp); err != nil {
		return nil, err
	}
	if err := keys.read.wait(ctx); err != nil {
		return nil, err
	}
	if keys.otk != nil {
		resp.OneTimeKeysCount = keys.otk
	}
	if keys.fallback != nil {
		resp.FallbackKeys = keys.fallback
	}
	resp.NextBatch = heads.String()
	return resp, nil
}

// membershipMoved reports whether any membership may have changed in an
// incremental sync's room-stream window: no event at all, or only
// non-state events in rooms the user's own membership did not change in,
// means none did. Unknown (too many events to list) counts as moved.
func (b *roomBuilder) membershipMoved(memberships []roomserver.MembershipEntry) bool {
	if b.initial() || b.heads.Room <= b.since.Room {
		return b.heads.Room > b.since.Room
	}
	if b.news == nil {
		return true
	}
	for _, m := range memberships {
		if m.StreamPos > b.since.Room {
			return true
		}
	}
	for _, state := range b.news {
		if state {
			return true
		}
	}
	return false
}

// addPresenceAndE2EE fills presence and the E2EE sections but the key
// counts (compute reads them alongside). It may lower
// heads.ToDevice (more messages wait than one response carries) or raise
// it (messages committed after the heads were read). moved is
// membershipMoved: whether the window may hold membership changes.
//
// An incremental sync skips the to-device read when the to-device head
// has not moved past the token (every message is at or below the head
// read for this response, and those at or below the token are
// acknowledged), and the device-list read when neither the device-list
// head nor any membership moved (DeviceListChanges of an empty window
// and an empty MembershipDelta is empty).
// Spec: client-server-api, "Extensions to /sync" of send-to-device
// messaging and of end-to-end encryption.
func (s *Server) addPresenceAndE2EE(ctx context.Context, req *syncRequest, since syncToken, heads *syncToken,
	memberships []roomserver.MembershipEntry, moved bool, resp *syncResponse) error {
	// An incremental sync whose presence head has not moved has no
	// presence news: (since, head] is empty. A filter that leaves
	// m.presence out skips the read.
	var delta *MembershipDelta
	if s.eph != nil && req.wantsPresence() && (req.since == nil || heads.Presence != since.Presence) {
		pres, err := s.eph.Presence(ctx, req.userID, since.Presence, heads.Presence)
		if err != nil {
			return err
		}
		resp.Presence = events(filterPresence(req.filter, pres))
	}
	if s.eph != nil && req.wantsPresence() && req.since != nil && moved {
		// Users the syncing user starts sharing a room with in this
		// window: their presence is news even if it did not change.
		// Complement: TestSync "Newly joined room includes presence in
		// incremental sync", TestMembersLocal "Existing members see new
		// members' presence".
		d, err := MembershipChanges(ctx, s.rooms, req.userID, memberships, since.Room, heads.Room)
		if err != nil {
			return err
		}
		delta = &d
		if err := s.addJoinedPresence(ctx, req.userID, d.Joined, heads.Presence, resp); err != nil {
			return err
		}
	}
	if s.e2ee == nil {
		return nil
	}
	// The client presenting a token has received the to-device messages
	// up to its position: delete them. A response lost in transit is
	// answered again from the same token, with the same messages.
	if req.since != nil && !req.acked {
		if since.ToDevice > 0 {
			if err := s.e2ee.AckToDevice(ctx, req.userID, req.deviceID, since.ToDevice); err != nil {
				return err
			}
		}
		req.acked = true
	}
	if req.since == nil || heads.ToDevice > since.ToDevice {
		td, next, err := s.e2ee.ToDevice(ctx, req.userID, req.deviceID, since.ToDevice, heads.ToDevice, toDeviceLimit)
		if err != nil {
			return err
		}
		resp.ToDevice = events(td)
		heads.ToDevice = next
	}
	if req.since != nil && (heads.DeviceLists > since.DeviceLists || moved) {
		if delta == nil {
			d, err := MembershipChanges(ctx, s.rooms, req.userID, memberships, since.Room, heads.Room)
			if err != nil {
				return err
			}
			delta = &d
		}
		dl, err := s.e2ee.DeviceListChanges(ctx, req.userID, since.DeviceLists, heads.DeviceLists, *delta)
		if err != nil {
			return err
		}
		if dl.Changed != nil {
			resp.DeviceLists.Changed = dl.Changed
		}
		if dl.Left != nil {
			resp.DeviceLists.Left = dl.Left
		}
	}
	return nil
}

// wantsPresence reports whether the request's presence filter lets
// m.presence events through at all (its senders are checked per event).
// Spec: client-server-api, "Filtering" (EventFilter types and not_types).
func (req *syncRequest) wantsPresence() bool {
	if req.filter == nil || req.filter.Presence == nil {
		return true
	}
	f := req.filter.Presence
	return !matchAnyType(f.NotTypes, "m.presence") && (f.Types == nil || matchAnyType(f.Types, "m.presence"))
}

// filterPresence keeps the m.presence events whose sender the presence
// filter allows.
func filterPresence(filter *clientapi.Filter, pres []json.RawMessage) []json.RawMessage {
	if filter == nil || filter.Presence == nil {
		return pres
	}
	kept := pres[:0]
	for _, ev := range pres {
		if eventFilterAllows(filter.Presence, "m.presence", gjson.GetBytes(ev, "sender").Str) {
			kept = append(kept, ev)
		}
	}
	return kept
}

// fillUnread sets the unread counts of the joined rooms in a response
// and b.heads.Unread, how far they go. With the filter's
// unread_thread_notifications, unread_notifications counts the main
// timeline and each thread gets its own entry; otherwise
// unread_notifications counts everything.
// Spec: client-server-api, "GET /_matrix/client/v3/sync", JoinedRoom.
//
// Counts move only with the room's events and the user's receipts, so
// an incremental sync whose receipt head did not move reads them only
// for the rooms with events (or a membership change of the user) in its
// window; the others go without unread_notifications. Without push
// every room gets zero counts.
//
// The push consumer commits an event's notifications after the event
// itself (a second transaction). A long poll (incremental, with a
// timeout) does not wait for it: it answers with the counts committed
// so far, up to the token's Unread position, and the consumer's commit
// (UnreadCountsStream) wakes it again; the next response then carries
// the refreshed unread_notifications of the rooms with events in
// (since.Unread, heads.Unread], even with no new event. Any other sync
// waits (bounded) for the consumer to reach its room head, so an
// initial sync's counts match its timeline. Synapse likewise computes
// counts apart from the event's persistence.
func (s *Server) fillUnread(ctx context.Context, b *roomBuilder, memberships []roomserver.MembershipEntry, joined map[string]*joinedRoom) error {
	req, heads := b.req, b.heads
	wait := req.since == nil || req.timeout <= 0 || req.fullState
	b.heads.Unread = heads.Unread // without push: 0, as read
	if !wait && s.push != nil && !b.initial() && !b.sentWhole &&
		heads.Unread <= b.since.Unread && heads.Receipts == b.since.Receipts {
		// A long poll with no receipt since its token, whose push
		// consumer has counted nothing past the token's Unread, and with
		// no room sent whole: every room's counts are those the client
		// already holds (counts move only with counted events and
		// receipts), so they are not read and the rooms go without
		// unread_notifications; the consumer's commit wakes the poll
		// again with the new counts. The token keeps its Unread.
		b.heads.Unread = b.since.Unread
		return nil
	}
	// Rooms whose counts a client with this token may not have seen in
	// full: events in (since.Unread, since.Room]. Later events up to
	// heads.Room are the window's news (b.news). So every room with an
	// event in (since.Unread, heads.Room] is counted below, and the
	// response's counts are complete up to where the consumer had
	// committed when they were read.
	var stale map[string]bool // keys only (values: a state event)
	staleAll := false
	if !b.initial() && s.push != nil && b.since.Unread < b.since.Room {
		rooms, complete, err := s.news.roomsWithEvents(ctx, b.since.Unread, b.since.Room, newsScanLimit)
		if err != nil {
			return err
		}
		stale, staleAll = rooms, !complete
	}
	var roomIDs []string
	if b.initial() || heads.Receipts > b.since.Receipts || b.news == nil {
		for id := range joined {
			roomIDs = append(roomIDs, id)
		}
	} else {
		ownChange := map[string]bool{}
		for _, m := range memberships {
			if m.StreamPos > b.since.Room {
				ownChange[m.RoomID] = true
			}
		}
		for id := range joined {
			_, isNews := b.news[id]
			_, isStale := stale[id]
			if isNews || ownChange[id] || staleAll || isStale {
				roomIDs = append(roomIDs, id)
			}
		}
	}
	if staleAll || len(stale) > 0 {
		// A room with stale counts and nothing else new is not in the
		// response yet: it comes with its counts alone.
		for _, m := range memberships {
			_, isStale := stale[m.RoomID]
			if m.Membership != "join" || joined[m.RoomID] != nil || !roomAllowed(req.filter, m.RoomID) ||
				!(staleAll || isStale) {
				continue
			}
			joined[m.RoomID] = &joinedRoom{Timeline: timeline{Events: []json.RawMessage{}}, Ephemeral: events(nil), AccountData: events(nil)}
			roomIDs = append(roomIDs, m.RoomID)
		}
	}
	for _, id := range roomIDs {
		joined[id].UnreadNotifications = &unreadCounts{}
	}
	if s.push == nil {
		return nil
	}
	if len(roomIDs) == 0 {
		// No joined room had an event in (since.Unread, heads.Room]:
		// the client's counts are complete up to the room head.
		b.heads.Unread = heads.Room
		return nil
	}
	roomPos := int64(0) // a long poll does not wait for the consumer
	if wait {
		roomPos = heads.Room
	}
	var counts map[string]RoomUnread
	var counted int64
	var err error
	if !wait && s.counts != nil {
		// Long polls woken together read their counts together.
		counts, counted, err = s.counts.unreadCounts(ctx, req.userID, roomIDs, heads.Receipts)
	} else {
		counts, counted, err = s.push.UnreadCounts(ctx, req.userID, roomIDs, roomPos, heads.Receipts)
	}
	if err != nil {
		return err
	}
	b.heads.Unread = min(counted, heads.Room)
	threaded := req.filter != nil && req.filter.Room != nil && req.filter.Room.Timeline != nil &&
		req.filter.Room.Timeline.UnreadThreadNotifications
	for _, id := range roomIDs {
		jr := joined[id]
		c, ok := counts[id]
		if !ok {
			continue
		}
		// Written into the zero counts set above (one allocation a room).
		if !threaded {
			*jr.UnreadNotifications = unreadCounts{NotificationCount: c.Total.Notifications, HighlightCount: c.Total.Highlights}
			continue
		}
		*jr.UnreadNotifications = unreadCounts{NotificationCount: c.Main.Notifications, HighlightCount: c.Main.Highlights}
		for root, tc := range c.Threads {
			if jr.UnreadThreadNotifications == nil {
				jr.UnreadThreadNotifications = map[string]unreadCounts{}
			}
			jr.UnreadThreadNotifications[root] = unreadCounts{NotificationCount: tc.Notifications, HighlightCount: tc.Highlights}
		}
	}
	return nil
}

// withPushRules adds the user's m.push_rules to an initial sync's
// account data when none is stored (Deps.Push renders the defaults).
func (s *Server) withPushRules(ctx context.Context, userID string, acct []clientapi.AccountData) ([]clientapi.AccountData, error) {
	if s.push == nil {
		return acct, nil
	}
	for _, a := range acct {
		if a.RoomID == "" && a.Type == "m.push_rules" {
			return acct, nil
		}
	}
	content, err := s.push.PushRules(ctx, userID)
	if err != nil {
		return nil, err
	}
	return append(acct, clientapi.AccountData{Type: "m.push_rules", Content: content}), nil
}

// userMemberships is Rooms.UserMemberships, read together with other
// requests' when Rooms can (membershipsBatcher). With memo the answer
// may come from the waker's memo (membershipmemo.go), exact at room
// stream position room (-1: a long poll's registration); only an
// incremental sync without full_state may pass memo. Every read
// refreshes the memo. The list is the caller's own.
func (s *Server) userMemberships(ctx context.Context, userID string, memo bool, room int64) ([]roomserver.MembershipEntry, error) {
	if memo {
		if memberships, ok := s.waker.memo.get(userID, room); ok {
			return memberships, nil
		}
	}
	if s.memberships != nil {
		return s.memberships.memberships(ctx, userID)
	}
	return readMemberships(ctx, s.rooms, s.waker.memo, userID)
}

// readMemberships is rooms.UserMemberships(ctx, userID), kept in memo.
func readMemberships(ctx context.Context, rooms Rooms, memo *membershipMemo, userID string) ([]roomserver.MembershipEntry, error) {
	t := memo.begin()
	memberships, err := rooms.UserMemberships(ctx, userID)
	if err == nil {
		memo.put(t, []string{userID}, map[string][]roomserver.MembershipEntry{userID: slices.Clone(memberships)})
	}
	return memberships, err
}
