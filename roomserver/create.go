package roomserver

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"maps"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// Presets. Spec: client-server-api, "POST /createRoom", preset.
const (
	PresetPrivateChat        = "private_chat"
	PresetTrustedPrivateChat = "trusted_private_chat"
	PresetPublicChat         = "public_chat"
)

// CreateRoom creates a room: the create event, the creator's join, power
// levels, canonical alias, preset state, initial_state, name, topic and
// invites, in that order, each built on the previous one and auth-checked,
// all committed in one transaction.
// Spec: client-server-api, "Creation" and "POST /createRoom".
func (s *Server) CreateRoom(ctx context.Context, req CreateRoomRequest) (*CreateRoomResponse, error) {
	plan, err := s.planRoom(&req)
	if err != nil {
		return nil, err
	}
	create := plan[0]
	version := req.RoomVersion

	// The create event does not depend on stored state; build it first so
	// a v12 room knows its ID (the create event's hash).
	if impl, _ := roomVersion(version); !impl.DomainlessRoomIDs() {
		create.RoomID = randomRoomID(s.serverName)
	}
	room := &roomRow{Version: version}
	createPDU, err := s.build(ctx, s.db.Reader(), nil, room, create, "")
	if err != nil {
		return nil, err
	}
	roomID, err := guard("room ID", func() (string, error) { return createPDU.RoomID().String(), nil })
	if err != nil {
		return nil, err
	}
	room.RoomID = roomID
	resp := &CreateRoomResponse{RoomID: roomID}
	if req.RoomAliasName != "" {
		resp.Alias = "#" + req.RoomAliasName + ":" + string(s.serverName)
		if req.ReserveAlias != nil {
			if err := req.ReserveAlias(ctx, resp.Alias, roomID); err != nil {
				return nil, err
			}
		}
		plan = insertAfterPowerLevels(plan, stateProto(req.Creator, "m.room.canonical_alias", "", map[string]any{"alias": resp.Alias}))
	}

	unlock := s.lockRoom(ctx, roomID)
	defer unlock()
	err = s.db.Write(ctx, func(tx storage.Tx) error {
		resp.EventIDs = resp.EventIDs[:0]
		r := *room
		if err := insertRoom(ctx, tx, roomID, version, s.now().UnixMilli()); err != nil {
			return err
		}
		for i, proto := range plan {
			pdu := createPDU
			if i > 0 {
				proto.RoomID = roomID
				if pdu, err = s.build(ctx, tx, tx, &r, proto, ""); err != nil {
					return err
				}
			}
			p, err := s.prepare(ctx, tx, tx, &r, pdu)
			if err != nil {
				return err
			}
			if p.outcome != Accepted {
				return mxerr.New(mxerr.Forbidden, "%s %s: %s", proto.Type, stateKeyOf(proto), p.reason)
			}
			if err := s.commit(ctx, tx, p); err != nil {
				return err
			}
			resp.EventIDs = append(resp.EventIDs, p.row.EventID)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

func stateKeyOf(p *gomatrixserverlib.ProtoEvent) string {
	if p.StateKey == nil {
		return ""
	}
	return *p.StateKey
}

// planRoom validates the request and returns the initial events (without
// the canonical alias, which needs the room ID).
func (s *Server) planRoom(req *CreateRoomRequest) ([]*gomatrixserverlib.ProtoEvent, error) {
	if domainOf(req.Creator) != string(s.serverName) {
		return nil, mxerr.New(mxerr.Forbidden, "creator %s is not a local user", req.Creator)
	}
	if req.RoomVersion == "" {
		req.RoomVersion = s.cfg.DefaultRoomVersion
	}
	impl, err := roomVersion(req.RoomVersion)
	if err != nil {
		return nil, err
	}
	preset := req.Preset
	if preset == "" {
		preset = PresetPrivateChat
		if req.Visibility == "public" {
			preset = PresetPublicChat
		}
	}
	if preset != PresetPrivateChat && preset != PresetTrustedPrivateChat && preset != PresetPublicChat {
		return nil, mxerr.New(mxerr.BadJSON, "unknown preset %q", preset)
	}
	invitees := append(append([]string{}, req.Invite...), req.RemoteInvites...)
	for _, u := range invitees {
		if _, err := spec.NewUserID(u, true); err != nil {
			return nil, mxerr.New(mxerr.InvalidParam, "invalid user ID %q in invite", u)
		}
	}
	if req.RoomAliasName != "" {
		if _, err := spec.NewUserID("@"+req.RoomAliasName+":"+string(s.serverName), false); err != nil || containsAny(req.RoomAliasName, ":# ") {
			return nil, mxerr.New(mxerr.InvalidParam, "invalid room alias name %q", req.RoomAliasName)
		}
	}
	privileged := impl.PrivilegedCreators()

	// 1. m.room.create. Spec: rooms/v11 drops "creator"; rooms/v12 adds
	// additional_creators and derives the room ID from this event.
	createContent := maps.Clone(req.CreationContent)
	if createContent == nil {
		createContent = map[string]any{}
	}
	createContent["room_version"] = req.RoomVersion
	if impl.CreatorInCreateEvent() {
		createContent["creator"] = req.Creator
	} else {
		delete(createContent, "creator")
	}
	if privileged {
		var extra []string
		if v, ok := createContent["additional_creators"]; ok {
			list, ok := v.([]any)
			if !ok {
				return nil, mxerr.New(mxerr.BadJSON, "additional_creators must be an array of user IDs")
			}
			for _, x := range list {
				u, ok := x.(string)
				if _, err := spec.NewUserID(u, true); !ok || err != nil {
					return nil, mxerr.New(mxerr.BadJSON, "additional_creators contains an invalid user ID")
				}
				extra = append(extra, u)
			}
		}
		if preset == PresetTrustedPrivateChat {
			for _, u := range invitees {
				if !contains(extra, u) && u != req.Creator {
					extra = append(extra, u)
				}
			}
		}
		if len(extra) > 0 {
			createContent["additional_creators"] = extra
		}
	} else if _, ok := createContent["additional_creators"]; ok {
		return nil, mxerr.New(mxerr.BadJSON, "additional_creators needs room version 12 or later")
	}
	plan := []*gomatrixserverlib.ProtoEvent{stateProto(req.Creator, "m.room.create", "", createContent)}
	if _, err := marshalChecked(createContent); err != nil {
		return nil, err
	}

	// 2. The creator's join.
	join := maps.Clone(req.CreationContentMember())
	join["membership"] = "join"
	plan = append(plan, stateProto(req.Creator, "m.room.member", req.Creator, join))

	// 3. Power levels.
	pl := defaultPowerLevels(req.Creator, preset, privileged, invitees)
	for k, v := range req.PowerLevelContentOverride {
		pl[k] = v
	}
	if _, err := marshalChecked(pl); err != nil {
		return nil, err
	}
	plan = append(plan, stateProto(req.Creator, "m.room.power_levels", "", pl))

	// 5. Preset state, unless initial_state sets the same key.
	inInitial := func(t string) bool {
		for _, e := range req.InitialState {
			if e.Type == t && e.StateKey == "" {
				return true
			}
		}
		return false
	}
	joinRule, guest := "invite", "can_join"
	if preset == PresetPublicChat {
		joinRule, guest = "public", "forbidden"
	}
	presetEvents := []struct {
		t       string
		content map[string]any
	}{
		{"m.room.join_rules", map[string]any{"join_rule": joinRule}},
		{"m.room.history_visibility", map[string]any{"history_visibility": "shared"}},
		{"m.room.guest_access", map[string]any{"guest_access": guest}},
	}
	if s.cfg.EncryptPrivateRooms && preset != PresetPublicChat {
		presetEvents = append(presetEvents, struct {
			t       string
			content map[string]any
		}{"m.room.encryption", map[string]any{"algorithm": "m.megolm.v1.aes-sha2"}})
	}
	for _, e := range presetEvents {
		if e.t == "m.room.guest_access" && guest == "forbidden" {
			// An absent m.room.guest_access means forbidden (spec:
			// client-server-api, "m.room.guest_access"); like Synapse,
			// public_chat sends none, so the room's first events are the
			// ones other servers expect.
			continue
		}
		if !inInitial(e.t) {
			plan = append(plan, stateProto(req.Creator, e.t, "", e.content))
		}
	}

	// 6. initial_state, in order.
	for _, e := range req.InitialState {
		if e.Type == "m.room.create" || (e.Type == "m.room.member" && e.StateKey == req.Creator) {
			return nil, mxerr.New(mxerr.BadJSON, "initial_state may not contain %s", e.Type)
		}
		sk := e.StateKey
		if err := checkFieldLimits(e.Type, &sk, req.Creator); err != nil {
			return nil, err
		}
		content := []byte(e.Content)
		if len(content) == 0 {
			content = []byte("{}")
		}
		if err := validateClientJSON(content); err != nil {
			return nil, err
		}
		plan = append(plan, &gomatrixserverlib.ProtoEvent{SenderID: req.Creator, Type: e.Type, StateKey: &sk, Content: content})
	}

	// 7. Name and topic.
	if req.Name != "" {
		plan = append(plan, stateProto(req.Creator, "m.room.name", "", map[string]any{"name": req.Name}))
	}
	if req.Topic != "" {
		plan = append(plan, stateProto(req.Creator, "m.room.topic", "", map[string]any{
			"topic":   req.Topic,
			"m.topic": map[string]any{"m.text": []any{map[string]any{"body": req.Topic, "mimetype": "text/plain"}}},
		}))
	}

	// 8. Invites (of this server's users; RemoteInvites are the caller's).
	for _, u := range req.Invite {
		content := map[string]any{"membership": "invite"}
		if req.IsDirect {
			content["is_direct"] = true
		}
		plan = append(plan, stateProto(req.Creator, "m.room.member", u, content))
	}
	return plan, nil
}

// CreationContentMember returns the extra keys for the creator's join
// event (nothing by default; the client layer may set a profile).
func (req *CreateRoomRequest) CreationContentMember() map[string]any {
	if req.CreatorMemberContent == nil {
		return map[string]any{}
	}
	return req.CreatorMemberContent
}

// defaultPowerLevels are the power levels of a new room.
// Spec: client-server-api, "POST /createRoom" step 3 and
// "m.room.power_levels".
func defaultPowerLevels(creator, preset string, privileged bool, invitees []string) map[string]any {
	users := map[string]any{}
	if !privileged {
		users[creator] = 100
		if preset == PresetTrustedPrivateChat {
			for _, u := range invitees {
				users[u] = 100
			}
		}
	}
	tombstone := 100
	if privileged {
		// Spec: v12 rooms need tombstone above state_default... and above
		// the admin level so only creators can upgrade.
		tombstone = 150
	}
	invite := 0
	if preset == PresetPublicChat {
		invite = 50
	}
	return map[string]any{
		"users":          users,
		"users_default":  0,
		"events_default": 0,
		"state_default":  50,
		"ban":            50,
		"kick":           50,
		"redact":         50,
		"invite":         invite,
		"events": map[string]any{
			"m.room.name":               50,
			"m.room.avatar":             50,
			"m.room.topic":              50,
			"m.room.canonical_alias":    50,
			"m.room.power_levels":       100,
			"m.room.history_visibility": 100,
			"m.room.encryption":         100,
			"m.room.server_acl":         100,
			"m.room.tombstone":          tombstone,
		},
		"notifications": map[string]any{"room": 50},
	}
}

func stateProto(sender, eventType, stateKey string, content map[string]any) *gomatrixserverlib.ProtoEvent {
	raw, _ := json.Marshal(content)
	return &gomatrixserverlib.ProtoEvent{SenderID: sender, Type: eventType, StateKey: &stateKey, Content: raw}
}

// marshalChecked marshals v and applies the client JSON rules to it.
func marshalChecked(v any) ([]byte, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, mxerr.Wrap(err, mxerr.BadJSON, "invalid JSON")
	}
	return raw, validateClientJSON(raw)
}

func insertAfterPowerLevels(plan []*gomatrixserverlib.ProtoEvent, e *gomatrixserverlib.ProtoEvent) []*gomatrixserverlib.ProtoEvent {
	for i, p := range plan {
		if p.Type == "m.room.power_levels" {
			out := append([]*gomatrixserverlib.ProtoEvent{}, plan[:i+1]...)
			out = append(out, e)
			return append(out, plan[i+1:]...)
		}
	}
	return append(plan, e)
}

func containsAny(s, chars string) bool {
	for i := 0; i < len(s); i++ {
		for j := 0; j < len(chars); j++ {
			if s[i] == chars[j] {
				return true
			}
		}
	}
	return false
}

// randomRoomID makes a v1–v11 room ID: "!" + 18 random letters + ":" + server.
func randomRoomID(server spec.ServerName) string {
	const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	b := make([]byte, 18)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = letters[int(b[i])%len(letters)]
	}
	return "!" + string(b) + ":" + string(server)
}
