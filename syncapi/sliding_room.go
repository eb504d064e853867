package syncapi

import (
	"context"
	"encoding/json"
	"slices"
	"strconv"

	"github.com/tidwall/gjson"

	"github.com/myelin-chat/myelin/clientapi"
	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/roomserver"
)

// slidingRoom builds one room's result, or nil when the connection
// already has everything about it. Spec: MSC4186, "Room results".
func (s *Server) slidingRoom(ctx context.Context, userID, deviceID string, c *candidate, cfg *roomConfig,
	prev *connState, heads syncToken, fmt *eventFormatter, dms map[string]bool, ignored map[string]bool) (*slidingRoomResult, error) {
	sent, wasSent := prev.rooms[c.m.RoomID]
	expanded := wasSent && (cfg.timelineLimit > sent.timelineLimit || cfg.signature() != sent.stateSig)
	if wasSent && !expanded && c.latest <= sent.pos {
		return nil, nil
	}
	initial := !wasSent || expanded
	res := &slidingRoomResult{Initial: initial, Membership: c.m.Membership, Lists: cfg.lists, BumpStamp: c.bump}
	if c.m.Membership == "ban" {
		res.Membership = "ban"
	}
	if initial || dms[c.m.RoomID] {
		isDM := dms[c.m.RoomID]
		if isDM || !initial {
			res.IsDM = &isDM
		}
	}
	switch c.m.Membership {
	case "invite", "knock":
		st, err := (&roomBuilder{s: s, req: &syncRequest{userID: userID}}).stripped(ctx, c.m.RoomID)
		if err != nil {
			return nil, err
		}
		res.StrippedState, res.InviteState = st, st
		return res, nil
	}
	// Joined, or left / banned after having been in the room.
	to := heads.Room
	if c.m.Membership != "join" {
		to = c.m.StreamPos
	}
	from := sent.pos
	if initial {
		from = 0
	}
	var tl []*roomserver.Event
	if cfg.timelineLimit > 0 {
		rr, err := s.rooms.RecentEvents(ctx, roomserver.RecentRequest{UserID: userID, RoomID: c.m.RoomID,
			From: from, To: to, Limit: min(cfg.timelineLimit, maxTimelineLimit)})
		if err != nil {
			return nil, err
		}
		tl = withoutIgnoredSenders(rr.Events, ignored)
		res.Limited, res.PrevBatch = rr.Limited, rr.PrevBatch
		res.ExpandedTimeline = expanded && cfg.timelineLimit > sent.timelineLimit
	}
	live := 0
	for _, e := range tl {
		if prev.heads.Room > 0 && e.StreamPos > prev.heads.Room {
			live++
		}
	}
	res.NumLive = &live
	var own []string
	for _, e := range tl {
		if e.Sender == userID {
			own = append(own, e.EventID)
		}
	}
	txn, err := s.rooms.TxnIDs(ctx, c.m.RoomID, userID, deviceID, own)
	if err != nil {
		return nil, err
	}
	fmt.txnIDs = txn
	res.Timeline = fmt.formatAll(tl)

	// State: all current state for an initial room, else what changed
	// and is still current. For a room the user left, the state at the
	// leave.
	var state []*roomserver.Event
	if c.m.Membership == "join" {
		if initial {
			state, err = s.rooms.IndexedCurrentState(ctx, c.m.RoomID, nil, false)
		} else {
			state, err = s.rooms.StateDelta(ctx, c.m.RoomID, sent.pos, to)
		}
		if err != nil {
			return nil, err
		}
		state = upTo(state, to)
	} else {
		at, err := s.rooms.StateAt(ctx, userID, c.m.EventID)
		if err != nil && !mxerr.Is(err, mxerr.NotFound) {
			return nil, err
		}
		if at != nil {
			for _, e := range at.After {
				if initial || e.StreamPos > sent.pos {
					state = append(state, e)
				}
			}
		}
	}
	var selected []*roomserver.Event
	for _, e := range state {
		if cfg.selects(e) {
			selected = append(selected, e)
		}
	}
	if cfg.lazy() {
		if selected, err = s.lazyMembers(ctx, c.m.RoomID, selected, tl, to); err != nil {
			return nil, err
		}
	}
	res.RequiredState = fmt.formatAll(selected)

	memberChanged := initial || hasMember(state)
	var name, avatar *roomserver.Event
	for _, e := range state {
		switch {
		case e.Type == "m.room.name" && stateKeyOf(e) == "":
			name = e
		case e.Type == "m.room.avatar" && stateKeyOf(e) == "":
			avatar = e
		}
	}
	if name != nil {
		res.Name = stringOrNil(gjson.GetBytes(name.Content, "name"))
	}
	if avatar != nil {
		res.Avatar = stringOrNil(gjson.GetBytes(avatar.Content, "url"))
	}
	if memberChanged {
		ms, err := s.rooms.RoomMemberSummary(ctx, c.m.RoomID)
		if err != nil {
			return nil, err
		}
		res.JoinedCount, res.InvitedCount = &ms.Joined, &ms.Invited
		if initial && (res.Name == nil || *res.Name == "") {
			if res.Heroes, err = s.heroes(ctx, c.m.RoomID, heroes(ms, userID)); err != nil {
				return nil, err
			}
		}
	}
	return res, nil
}

func stringOrNil(r gjson.Result) *string {
	if r.Type != gjson.String || r.Str == "" {
		return nil
	}
	return &r.Str
}

// heroes attaches display names and avatars from member events.
func (s *Server) heroes(ctx context.Context, roomID string, ids []string) ([]hero, error) {
	members, err := s.rooms.IndexedStateKeys(ctx, roomID, "m.room.member", ids)
	if err != nil {
		return nil, err
	}
	byID := map[string]*roomserver.Event{}
	for _, e := range members {
		byID[stateKeyOf(e)] = e
	}
	out := make([]hero, 0, len(ids))
	for _, id := range ids {
		h := hero{UserID: id}
		if e := byID[id]; e != nil {
			h.DisplayName = gjson.GetBytes(e.Content, "displayname").Str
			h.AvatarURL = gjson.GetBytes(e.Content, "avatar_url").Str
		}
		out = append(out, h)
	}
	return out, nil
}

// lazyMembers adds the membership of the timeline's senders and of the
// targets of membership events in it. Spec: MSC4186, "Lazy loaded
// memberships" (not filtered by exclude).
func (s *Server) lazyMembers(ctx context.Context, roomID string, selected, tl []*roomserver.Event, to int64) ([]*roomserver.Event, error) {
	var want []string
	for _, e := range tl {
		for _, u := range []string{e.Sender, memberTarget(e)} {
			if u != "" && !contains(want, u) {
				want = append(want, u)
			}
		}
	}
	members, err := s.rooms.IndexedStateKeys(ctx, roomID, "m.room.member", want)
	if err != nil {
		return nil, err
	}
	for _, e := range upTo(members, to) {
		if !containsEvent(selected, e.EventID) {
			selected = append(selected, e)
		}
	}
	return selected, nil
}

func memberTarget(e *roomserver.Event) string {
	if e.Type == "m.room.member" {
		return stateKeyOf(e)
	}
	return ""
}

func enabled(req *slidingRequest, name string) bool {
	x, ok := req.Extensions[name]
	return ok && x.Enabled != nil && *x.Enabled
}

// slidingExtensions fills the extensions the request enabled. Sources
// that do not exist yet (Ephemeral, E2EE nil) give present, empty
// sections. Spec: MSC4186, "Extensions", and the extension MSCs it
// names (to-device MSC3885, e2ee MSC3884, account data MSC3959,
// receipts MSC3960, typing MSC3961).
func (s *Server) slidingExtensions(ctx context.Context, caller *authn.Device, req *slidingRequest, prev *connState,
	heads syncToken, memberships []roomserver.MembershipEntry, acct []clientapi.AccountData, scope slidingScope, resp *slidingResponse) error {
	if enabled(req, "account_data") {
		global := []json.RawMessage{}
		rooms := map[string][]json.RawMessage{}
		for _, a := range acct {
			if a.Position <= prev.heads.AccountData {
				continue
			}
			ev, _ := json.Marshal(map[string]any{"type": a.Type, "content": a.Content})
			if a.RoomID == "" {
				global = append(global, ev)
			} else {
				rooms[a.RoomID] = append(rooms[a.RoomID], ev)
			}
		}
		resp.Extensions["account_data"] = map[string]any{"global": global, "rooms": rooms}
	}
	if enabled(req, "to_device") {
		// The extension has its own token: the to-device position. A
		// request with since acknowledges (deletes) the messages up to it;
		// without since (a new connection) everything waiting is sent.
		ext := req.Extensions["to_device"]
		var since int64
		if ext.Since != "" {
			var err error
			if since, err = strconv.ParseInt(ext.Since, 10, 64); err != nil || since < 0 {
				return mxerr.New(mxerr.InvalidParam, "extensions.to_device.since is not a to-device token")
			}
		}
		limit := toDeviceLimit
		if ext.Limit != nil && *ext.Limit > 0 && *ext.Limit < limit {
			limit = *ext.Limit
		}
		evs, next := []json.RawMessage{}, heads.ToDevice
		if s.e2ee != nil {
			if since > heads.ToDevice {
				return mxerr.New(mxerr.InvalidParam, "extensions.to_device.since is from the future")
			}
			if since > 0 {
				if err := s.e2ee.AckToDevice(ctx, caller.UserID, caller.DeviceID, since); err != nil {
					return err
				}
			}
			got, n, err := s.e2ee.ToDevice(ctx, caller.UserID, caller.DeviceID, since, heads.ToDevice, limit)
			if err != nil {
				return err
			}
			evs, next = nonNil(got), n
		}
		resp.Extensions["to_device"] = map[string]any{"next_batch": strconv.FormatInt(next, 10), "events": evs}
	}
	if enabled(req, "e2ee") {
		lists := DeviceLists{Changed: []string{}, Left: []string{}}
		otk, fallback := map[string]int{}, []string{}
		if s.e2ee != nil {
			if prev.heads.Room > 0 {
				delta, err := MembershipChanges(ctx, s.rooms, caller.UserID, memberships, prev.heads.Room, heads.Room)
				if err != nil {
					return err
				}
				dl, err := s.e2ee.DeviceListChanges(ctx, caller.UserID, prev.heads.DeviceLists, heads.DeviceLists, delta)
				if err != nil {
					return err
				}
				if dl.Changed != nil {
					lists.Changed = dl.Changed
				}
				if dl.Left != nil {
					lists.Left = dl.Left
				}
			}
			o, f, err := s.e2ee.KeyCounts(ctx, caller.UserID, caller.DeviceID)
			if err != nil {
				return err
			}
			if o != nil {
				otk = o
			}
			if f != nil {
				fallback = f
			}
		}
		resp.Extensions["e2ee"] = map[string]any{"device_lists": lists, "device_one_time_keys_count": otk,
			"device_unused_fallback_key_types": fallback}
	}
	for _, name := range []string{"typing", "receipts"} {
		if enabled(req, name) {
			rooms, err := s.slidingEphemeral(ctx, caller.UserID, req, name, prev, heads, scope)
			if err != nil {
				return err
			}
			resp.Extensions[name] = map[string]any{"rooms": rooms}
		}
	}
	return nil
}

// slidingScope is what the room extensions need of a response: the
// joined rooms in the lists' ranges and the room subscriptions, and
// which lists each room is in.
type slidingScope struct {
	joined  []string
	configs map[string]*roomConfig
	// ignored are the users the syncing user ignores.
	ignored map[string]bool
}

// rooms returns the joined rooms an extension applies to: those in its
// lists and its room subscriptions ("*" or absent: all of them).
// Spec: MSC3960 and MSC3961, the core extension arguments lists and rooms.
func (sc slidingScope) rooms(req *slidingRequest, x slidingExtensionReq) []string {
	allLists := x.Lists == nil || contains(x.Lists, "*")
	allRooms := x.Rooms == nil || contains(x.Rooms, "*")
	var out []string
	for _, id := range sc.joined {
		inLists := slices.ContainsFunc(sc.configs[id].lists, func(l string) bool { return allLists || contains(x.Lists, l) })
		_, subscribed := req.RoomSubscriptions[id]
		if inLists || (subscribed && (allRooms || contains(x.Rooms, id))) {
			out = append(out, id)
		}
	}
	return out
}

// slidingEphemeral returns the m.typing or m.receipt event (name is
// "typing" or "receipts") of each room in the extension's scope that has
// news since prev: for a room this connection has not sent before, the
// current typing state and all receipts.
// Spec: MSC3961 (typing), MSC3960 (receipts).
func (s *Server) slidingEphemeral(ctx context.Context, userID string, req *slidingRequest, name string,
	prev *connState, heads syncToken, scope slidingScope) (map[string]json.RawMessage, error) {
	out := map[string]json.RawMessage{}
	if s.eph == nil {
		return out, nil
	}
	var known, fresh []string
	for _, id := range scope.rooms(req, req.Extensions[name]) {
		if _, sent := prev.rooms[id]; sent {
			known = append(known, id)
		} else {
			fresh = append(fresh, id)
		}
	}
	to := EphemeralPositions{Receipts: heads.Receipts, Typing: heads.Typing, Presence: heads.Presence}
	want := map[string]string{"typing": "m.typing", "receipts": "m.receipt"}[name]
	for _, part := range []struct {
		rooms []string
		since EphemeralPositions
	}{
		{known, EphemeralPositions{Receipts: prev.heads.Receipts, Typing: prev.heads.Typing}},
		{fresh, EphemeralPositions{}},
	} {
		if len(part.rooms) == 0 {
			continue
		}
		byRoom, err := s.eph.RoomEphemeral(ctx, userID, part.rooms, part.since, to)
		if err != nil {
			return nil, err
		}
		for id, evs := range byRoom {
			for _, e := range withoutIgnoredEphemeral(evs, scope.ignored) {
				if gjson.GetBytes(e, "type").Str == want {
					out[id] = e
				}
			}
		}
	}
	return out, nil
}

// extensionsHaveData reports whether any extension carries news, so a
// long-polling request returns.
func extensionsHaveData(ext map[string]any) bool {
	for name, v := range ext {
		m, _ := v.(map[string]any)
		switch name {
		case "account_data":
			if len(m["global"].([]json.RawMessage)) > 0 || len(m["rooms"].(map[string][]json.RawMessage)) > 0 {
				return true
			}
		case "to_device":
			if len(m["events"].([]json.RawMessage)) > 0 {
				return true
			}
		case "e2ee":
			dl := m["device_lists"].(DeviceLists)
			if len(dl.Changed) > 0 || len(dl.Left) > 0 {
				return true
			}
		case "typing", "receipts":
			if len(m["rooms"].(map[string]json.RawMessage)) > 0 {
				return true
			}
		case threadSubscriptionsExt:
			if len(m) > 0 {
				return true
			}
		}
	}
	return false
}
