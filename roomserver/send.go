package roomserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// SendEvent builds a local event on the room's forward extremities, signs
// it, checks it against the auth rules and persists it in one write
// transaction together with its transaction-ID mapping.
// Spec: client-server-api, "PUT /rooms/{roomId}/send/{eventType}/{txnId}"
// and "Transaction identifiers".
func (s *Server) SendEvent(ctx context.Context, req SendEventRequest) (*SendEventResponse, error) {
	if err := s.checkSendRequest(&req); err != nil {
		return nil, err
	}
	// A second m.room.create is malformed for every room version, not a
	// matter of power: 400, as Complement's
	// TestMSC4291RoomIDAsHashOfCreateEvent_CannotSendCreateEvent expects.
	// Spec: client-server-api, PUT /rooms/{roomId}/state/... ("400: The
	// sender's request is malformed").
	if req.Type == "m.room.create" {
		return nil, mxerr.New(mxerr.BadJSON, "m.room.create can only be sent by creating a room")
	}
	if req.Type == "m.room.power_levels" && req.StateKey != nil && *req.StateKey == "" {
		if err := s.checkCreatorsNotListed(ctx, req.RoomID, req.Content); err != nil {
			return nil, err
		}
	}
	if req.Type == "m.room.member" && gjson.GetBytes(req.Content, "join_authorised_via_users_server").Exists() {
		// Only the join handshake may name an authoriser, whose server
		// must sign the event; one a client wrote (a join -> join profile
		// change, say) would make other servers refuse the event. Spec:
		// server-server-api, "Restricted rooms"; Complement
		// TestRestrictedRoomsRemoteJoin.
		content, err := sjson.DeleteBytes(req.Content, "join_authorised_via_users_server")
		if err != nil {
			return nil, mxerr.Wrap(err, mxerr.BadJSON, "invalid content")
		}
		req.Content = content
	}
	proto := &gomatrixserverlib.ProtoEvent{
		SenderID: req.Sender,
		RoomID:   req.RoomID,
		Type:     req.Type,
		StateKey: req.StateKey,
		Content:  []byte(req.Content),
	}
	if req.OriginServerTS != 0 {
		ctx = context.WithValue(ctx, originTSKey{}, time.UnixMilli(req.OriginServerTS))
	}
	return s.sendProto(ctx, req.RoomID, proto, req.Redacts, req.TxnID)
}

// originTSKey carries a massaged origin_server_ts from SendEvent to sign.
type originTSKey struct{}

func (s *Server) checkSendRequest(req *SendEventRequest) error {
	if domainOf(req.Sender) != string(s.serverName) {
		return mxerr.New(mxerr.Forbidden, "sender %s is not a local user", req.Sender)
	}
	if req.Type == "" {
		return mxerr.New(mxerr.BadJSON, "event type is empty")
	}
	if err := checkFieldLimits(req.Type, req.StateKey, req.Sender); err != nil {
		return err
	}
	if len(req.Content) == 0 {
		req.Content = []byte("{}")
	}
	if len(req.Content) > maxEventBytes {
		return mxerr.New(mxerr.TooLarge, "content is %d bytes, more than the %d an event may have", len(req.Content), maxEventBytes)
	}
	if req.Content[0] != '{' {
		return mxerr.New(mxerr.BadJSON, "content must be a JSON object")
	}
	// Content in the shape clients send passes validateClientJSON when
	// canonicalPlain takes it and it is valid UTF-8: it holds no escape
	// (so no lone surrogate), no repeated key, only integers of up to 15
	// digits, and nests at most maxPlainDepth (< maxJSONDepth) deep. The
	// one walk also sorts it: its canonical form, which build makes of
	// the content anyway, replaces it.
	if canonical, ok := canonicalPlain(req.Content); ok && utf8.Valid(req.Content) {
		req.Content = canonical
		return nil
	}
	return validateClientJSON(req.Content)
}

// errTxnTaken is returned by the write of a send whose transaction ID is
// already stored: the request is a retry.
var errTxnTaken = errors.New("roomserver: transaction ID already used")

// sendProto is the local write path shared by SendEvent and the
// membership calls: under the room lock, build on the current state (or
// on the room's queued sends, see pipeline.go), decide and queue the
// write; then wait for its commit.
//
// A retried transaction ID returns the event the first request created.
// Spec: client-server-api, "Transaction identifiers". Retries are rare,
// so the check costs no read on the way in: the transaction ID is stored
// in the event's row, whose unique index roomserver_events_txn refuses a
// retry (the savepoint rolls the whole send back, so nothing of it is kept),
// and only then, or when building or authorising the retry fails (the
// room may have changed since the first request), is the stored event
// looked up, under the room lock once the room's queued writes have
// committed (so the first request's row, if queued, is visible).
func (s *Server) sendProto(ctx context.Context, roomID string, proto *gomatrixserverlib.ProtoEvent, redacts string, txn *TxnID) (*SendEventResponse, error) {
	attempt := *proto
	resp, err := s.buildAndQueue(ctx, roomID, &attempt, redacts, txn)
	if err == nil || ctx.Err() != nil || (txn == nil && !errors.Is(err, errPipelineBroken)) {
		return resp, err
	}
	unlock := s.lockRoom(ctx, roomID)
	defer unlock()
	if errors.Is(err, errPipelineBroken) {
		// Built on a queued event that was not stored: build again on the
		// committed room, nothing in flight.
		attempt = *proto
		resp, err = s.buildAndCommit(ctx, roomID, &attempt, redacts, txn)
		if err == nil || txn == nil || ctx.Err() != nil {
			return resp, err
		}
	}
	// Looked up on the endpoint's path: redacts is the target named in
	// the path of /redact, "" for /send (whatever content.redacts says).
	id, lookupErr := lookupTxn(ctx, s.db.Reader(), roomID, proto.SenderID, proto.Type, redacts, txn)
	if lookupErr != nil {
		return nil, lookupErr
	}
	if id != "" {
		return s.existingSend(ctx, id)
	}
	if errors.Is(err, errTxnTaken) {
		return nil, fmt.Errorf("roomserver: transaction ID %s refused as used but not found: %w", txn.TxnID, err)
	}
	return nil, err
}

// buildAndQueue builds and authorises the event under the room lock,
// queues its write, and waits for the commit after releasing the lock.
//
// In a room that uses a policy server (policy.go) the policy server is
// asked without the room lock, so that the room's other sends do not
// wait for it (up to policySignTimeout each): the event is built and
// authorised under the lock, the lock is released while the policy
// server answers, and under the lock again the signed event is
// authorised once more and queued only if the room row it was built on
// (forward extremities = its prev events, depth, current state snapshot
// = its auth state) is still the row a send would build on now. Else it
// is built again on the new row and the policy server asked again, at
// most maxPolicyRounds times; the last time it is asked holding the
// lock, as every send once did, so a send in a busy room still ends.
func (s *Server) buildAndQueue(ctx context.Context, roomID string, proto *gomatrixserverlib.ProtoEvent, redacts string, txn *TxnID) (*SendEventResponse, error) {
	var asked *policyAsked
	for round := 0; ; round++ {
		attempt := *proto
		resp, ask, err := s.buildAndQueueOnce(ctx, roomID, &attempt, redacts, txn, asked, round < maxPolicyRounds)
		if err != nil || ask == nil {
			return resp, err
		}
		// Not holding the room lock.
		result, err := s.policySignedLocal(ctx, ask.pol, ask.pdu)
		if err != nil {
			return nil, err
		}
		asked = &policyAsked{builtOn: ask.builtOn, result: result}
		if s.afterPolicyAsk != nil {
			s.afterPolicyAsk()
		}
	}
}

// maxPolicyRounds bounds the times a send asks its room's policy server
// without holding the room lock (see buildAndQueue).
const maxPolicyRounds = 3

// policyAsk is a built, authorised local event its room's policy server
// is to sign, and the room row it was built on.
type policyAsk struct {
	pol     *roomPolicy
	pdu     gomatrixserverlib.PDU
	builtOn *roomRow
}

// policyAsked is the event to store for a policyAsk (signed, or an own
// leave left unsigned), valid while the room row is still builtOn.
type policyAsked struct {
	builtOn *roomRow
	result  gomatrixserverlib.PDU
}

// buildAndQueueOnce is one round of buildAndQueue under the room lock:
// it queues the send and waits for its commit, or, when the event needs
// its room's policy server's signature and askOutside is set, returns
// the event to ask for it with the lock released. asked, when its row is
// still the room's, is the signed event to queue instead of building.
func (s *Server) buildAndQueueOnce(ctx context.Context, roomID string, proto *gomatrixserverlib.ProtoEvent, redacts string, txn *TxnID,
	asked *policyAsked, askOutside bool) (*SendEventResponse, *policyAsk, error) {
	unlock := s.lockRoomStripe(ctx, roomID)
	locked := true
	defer func() {
		if locked {
			unlock()
		}
	}()
	room, fromTail, inFlight, err := s.roomToBuildOn(ctx, roomID)
	if err != nil {
		return nil, nil, err
	}
	builtOn := room.clone() // commit updates room in place
	var p *prepared
	if asked != nil && sameRoomRow(room, asked.builtOn) {
		// Built on this very row: the same prev events, depth and auth
		// state. Authorised again all the same.
		if p, err = s.authoriseLocal(ctx, room, asked.result); err != nil {
			return nil, nil, err
		}
	} else {
		if p, err = s.buildAndAuthorise(ctx, room, proto, redacts); err != nil {
			return nil, nil, err
		}
		pol, err := s.localPolicy(ctx, s.db.Reader(), p)
		if err != nil {
			return nil, nil, err
		}
		if pol != nil && askOutside {
			return nil, &policyAsk{pol: pol, pdu: p.pdu, builtOn: builtOn}, nil
		}
		if pol != nil {
			signed, err := s.policySignedLocal(ctx, pol, p.pdu)
			if err != nil {
				return nil, nil, err
			}
			p.setPDU(signed)
		}
	}
	next := s.roomAfter(p)
	// The send's event write is the one its request announced, if it
	// did (storage.DB.ExpectWrite): queueing it ends the announcement.
	write := s.db.WriteQueued(storage.ForAnnouncedWrite(ctx), func(tx storage.Tx) error {
		if fromTail {
			if inFlight != nil && inFlight.Failed() {
				return errPipelineBroken // cheap early answer; saveRoomIf decides
			}
			p.builtOn, p.builtOnChecked = builtOn, false
		}
		if err := s.writeSend(ctx, tx, p, txn, redacts); err != nil {
			return err
		}
		if fromTail && !p.builtOnChecked {
			// commit did not save the room (it always does for an
			// accepted send; kept so that no path skips the check).
			if err := checkBuiltOn(ctx, tx, builtOn, nil); err != nil {
				return err
			}
		}
		if next != nil && !sameRoomRow(p.room, next) {
			return fmt.Errorf("roomserver: room %s after event %s is not the room the next send was to build on", roomID, p.row.EventID)
		}
		return nil
	})
	s.tails.set(roomID, &roomTail{write: write, room: next})
	if next != nil {
		// The next send may build on this event now.
		unlock()
		locked = false
	} else {
		// Holding the lock until the write commits.
		s.roomLockOf(roomID).committing()
	}
	if err := write.Wait(); err != nil {
		return nil, nil, err
	}
	return &SendEventResponse{EventID: p.row.EventID, StreamPos: p.row.NID}, nil, nil
}

// buildAndCommit is sendProto's work when the caller holds the room lock
// (lockRoom: nothing of the room in flight): build, decide, commit.
func (s *Server) buildAndCommit(ctx context.Context, roomID string, proto *gomatrixserverlib.ProtoEvent, redacts string, txn *TxnID) (*SendEventResponse, error) {
	room, err := loadRoom(ctx, s.db.Reader(), roomID)
	if err != nil {
		return nil, err
	}
	p, err := s.buildAndPrepare(ctx, room, proto, redacts)
	if err != nil {
		return nil, err
	}
	if err := s.db.Write(storage.ForAnnouncedWrite(ctx), func(tx storage.Tx) error { return s.writeSend(ctx, tx, p, txn, redacts) }); err != nil {
		return nil, err
	}
	return &SendEventResponse{EventID: p.row.EventID, StreamPos: p.row.NID}, nil
}

// buildAndPrepare builds, signs and authorises a local event on room,
// with its room's policy server's signature when it needs one.
func (s *Server) buildAndPrepare(ctx context.Context, room *roomRow, proto *gomatrixserverlib.ProtoEvent, redacts string) (*prepared, error) {
	p, err := s.buildAndAuthorise(ctx, room, proto, redacts)
	if err != nil {
		return nil, err
	}
	if err := s.policySignLocal(ctx, s.db.Reader(), p); err != nil {
		return nil, err
	}
	return p, nil
}

// buildAndAuthorise builds, signs and authorises a local event on room;
// the policy server is not asked.
func (s *Server) buildAndAuthorise(ctx context.Context, room *roomRow, proto *gomatrixserverlib.ProtoEvent, redacts string) (*prepared, error) {
	if err := checkOwnedStateKey(room.Version, proto.Type, proto.StateKey); err != nil {
		return nil, err
	}
	pdu, err := s.build(ctx, s.db.Reader(), nil, room, proto, redacts)
	if err != nil {
		return nil, err
	}
	return s.authoriseLocal(ctx, room, pdu)
}

// authoriseLocal checks the local event pdu, built on room, against the
// auth rules: M_FORBIDDEN unless it is accepted.
func (s *Server) authoriseLocal(ctx context.Context, room *roomRow, pdu gomatrixserverlib.PDU) (*prepared, error) {
	p, err := s.prepare(ctx, s.db.Reader(), nil, room, pdu)
	if err != nil {
		return nil, err
	}
	if p.outcome != Accepted {
		return nil, mxerr.New(mxerr.Forbidden, "%s", p.reason)
	}
	return p, nil
}

// writeSend is a send's write: the duplicate annotation check
// (annotations.go), then the event, its row carrying the transaction ID
// and, for PUT /redact, the target its path names (redacts).
func (s *Server) writeSend(ctx context.Context, tx storage.Tx, p *prepared, txn *TxnID, redacts string) error {
	if txn != nil {
		// Stored in the event's row; roomserver_events_txn refuses a
		// retry at the event's INSERT (migrations 013, 015).
		p.row.TxnDevice, p.row.TxnID = &txn.DeviceID, &txn.TxnID
		if redacts != "" {
			p.row.TxnRedacts = &redacts
		}
	}
	// A retried annotation is refused here as a duplicate of the first;
	// sendProto then finds the first by its transaction ID and returns it,
	// as it does after any failed write of a send with one.
	if err := checkDuplicateAnnotation(ctx, tx, p.row); err != nil {
		return err
	}
	err := s.commit(ctx, tx, p)
	if txn != nil && storage.IsUniqueViolation(err) {
		// The transaction ID's unique index, or (not seen for a
		// send: the ID is a hash of a new event) the event ID's:
		// sendProto looks the first event up and, if there is none,
		// answers with this error.
		return fmt.Errorf("%w (%w)", errTxnTaken, err)
	}
	return err
}

func (s *Server) existingSend(ctx context.Context, eventID string) (*SendEventResponse, error) {
	row, err := eventRowByID(ctx, s.db.Reader(), eventID)
	if err != nil {
		return nil, err
	}
	return &SendEventResponse{EventID: eventID, StreamPos: row.NID}, nil
}

// build makes, hashes and signs a local event with prev_events = the
// room's forward extremities and auth_events chosen from the current
// state as the room version requires.
// Spec: server-server-api, "Auth events selection".
func (s *Server) build(ctx context.Context, q storage.Querier, tx storage.Tx, room *roomRow, proto *gomatrixserverlib.ProtoEvent, redacts string) (gomatrixserverlib.PDU, error) {
	impl, err := roomVersion(room.Version)
	if err != nil {
		return nil, err
	}
	if redacts != "" {
		base := room.Version
		if b, owned := ownedStateVersions[base]; owned {
			base = b // MSC3757's versions follow their base's event format
		}
		if base == "11" || base == "12" {
			// Spec: rooms/v11, "Moving the redacts key".
			c, err := sjson.SetBytes(proto.Content, "redacts", redacts)
			if err != nil {
				return nil, mxerr.Wrap(err, mxerr.BadJSON, "bad content")
			}
			proto.Content = c
		} else {
			proto.Redacts = redacts
		}
	}
	proto.PrevEvents = append([]string{}, room.Extremities...)
	proto.Depth = min(room.MaxDepth+1, maxSafeInt)
	proto.Version = impl

	needed, err := guard("auth events needed", func() (gomatrixserverlib.StateNeeded, error) {
		return gomatrixserverlib.StateNeededForProtoEvent(proto)
	})
	if err != nil {
		return nil, mxerr.Wrap(err, mxerr.BadJSON, "invalid event")
	}
	keys := []tuple{{"m.room.create", ""}}
	for _, t := range needed.Tuples() {
		keys = append(keys, tuple{t.EventType, t.StateKey})
	}
	// The policy server configuration is read with the auth events (one
	// query, remembered per snapshot), so that policySignLocal's read of
	// it is a cache hit: a room without one pays nothing for it.
	keys = append(keys, policyTuple)
	state, err := s.stateEventsFor(ctx, q, tx, room, room.CurrentSnapshot, nil, keys)
	if err != nil {
		return nil, err
	}
	state = slices.DeleteFunc(state, isPolicyConfig)
	return guard("building event", func() (gomatrixserverlib.PDU, error) {
		eb := impl.NewEventBuilderFromProtoEvent(proto)
		provider, err := newStateAuthEvents(state)
		if err != nil {
			return nil, err
		}
		if err := eb.AddAuthEvents(provider); err != nil {
			return nil, mxerr.Wrap(err, mxerr.Forbidden, "cannot select auth events")
		}
		return s.sign(ctx, impl, eb)
	})
}

// sign builds and signs eb and applies the size limits. Common events
// take buildSigned (same bytes, less CPU); any other event, and any event
// buildSigned fails on, goes through EventBuilder.Build, so errors read
// as they always did.
func (s *Server) sign(ctx context.Context, impl gomatrixserverlib.IRoomVersion, eb *gomatrixserverlib.EventBuilder) (gomatrixserverlib.PDU, error) {
	ts := s.now()
	if massaged, ok := ctx.Value(originTSKey{}).(time.Time); ok {
		ts = massaged
	}
	if eb.Type == "m.room.create" && eb.RoomID == "" {
		ts = s.createTime(ts)
	}
	pdu, err := buildSigned(impl, eb, ts, s.serverName, s.keyID, s.signer)
	if err != nil {
		if pdu, err = eb.Build(ts, s.serverName, s.keyID, s.key.PrivateKey); err != nil {
			return nil, buildError(err)
		}
	}
	if err := checkEventLimits(pdu); err != nil {
		return nil, err
	}
	return pdu, nil
}

// createTime returns a timestamp for a create event whose hash becomes
// the room ID (room v12): now, or a millisecond past the last one handed
// out. Two rooms created by one user with the same options within one
// millisecond would otherwise have identical create events — the same
// room ID — and the second would fail with M_ROOM_IN_USE.
func (s *Server) createTime(now time.Time) time.Time {
	s.createMu.Lock()
	defer s.createMu.Unlock()
	ms := max(now.UnixMilli(), s.lastCreateMS+1)
	s.lastCreateMS = ms
	return time.UnixMilli(ms)
}

// StreamPosition returns the latest room stream position: of an event or
// of a current-state change without one (updateCurrentState).
func (s *Server) StreamPosition(ctx context.Context) (int64, error) {
	var pos int64
	err := s.db.Reader().QueryRow(ctx, streamHeadQuery).Scan(&pos)
	return pos, err
}

// RoomVersion returns a room's version.
func (s *Server) RoomVersion(ctx context.Context, roomID string) (string, error) {
	room, err := loadRoom(ctx, s.db.Reader(), roomID)
	if err != nil {
		return "", err
	}
	return room.Version, nil
}

// InputEvent is the federation entry point: it parses a PDU of the given
// room version and decides and stores it like a local event, except that
// failing auth stores it as rejected instead of returning an error.
// Spec: server-server-api, "Checks performed on receipt of a PDU".
func (s *Server) InputEvent(ctx context.Context, req InputEventRequest) (*InputEventResponse, error) {
	pdu, roomID, err := parseInputPDU(req)
	if err != nil {
		return nil, err
	}
	resp, unsigned, err := s.inputEvent(ctx, req, pdu, roomID, false)
	if unsigned == nil {
		return resp, err
	}
	// The room uses a policy server and pdu lacks its valid signature:
	// ask it once, not holding the room lock, then decide again (the
	// event is soft-failed if it still lacks one). Spec: server-server-api,
	// "Validating Policy Server signatures".
	resp, _, err = s.inputEvent(ctx, req, s.askPolicyServerIncoming(ctx, unsigned, pdu), roomID, true)
	return resp, err
}

// inputEvent is InputEvent's work under the room lock. When the room
// uses a policy server whose valid signature pdu lacks, it writes
// nothing and returns that policy server, unless asked says it was
// asked already: then pdu is soft-failed.
func (s *Server) inputEvent(ctx context.Context, req InputEventRequest, pdu gomatrixserverlib.PDU, roomID string, asked bool) (*InputEventResponse, *roomPolicy, error) {
	unlock := s.lockRoom(ctx, roomID)
	defer unlock()
	reader := s.db.Reader()
	outlierNID, duplicate, err := heldOutlier(ctx, reader, pdu.EventID())
	if err != nil {
		return nil, nil, err
	}
	if duplicate {
		return &InputEventResponse{EventID: pdu.EventID(), Outcome: Duplicate}, nil, nil
	}
	var room *roomRow
	if isCreate(pdu) {
		room = &roomRow{RoomID: roomID, Version: req.RoomVersion}
	} else if room, err = loadRoom(ctx, reader, roomID); err != nil {
		return nil, nil, err
	}
	if room.Version != req.RoomVersion {
		return nil, nil, mxerr.New(mxerr.BadJSON, "room %s is version %s, not %s", roomID, room.Version, req.RoomVersion)
	}
	p, err := s.prepare(ctx, reader, nil, room, pdu)
	if err != nil {
		return nil, nil, err
	}
	if p.outcome == Accepted && needsPolicySignature(pdu) {
		pol, err := s.policyOf(ctx, reader, nil, room)
		if err != nil {
			return nil, nil, err
		}
		if pol != nil && !pol.validSignature(pdu) {
			if !asked {
				return nil, pol, nil
			}
			// Spec: server-server-api, "Validating Policy Server
			// signatures": still without a valid signature, soft fail.
			p.outcome, p.reason = SoftFailed, fmt.Sprintf("no valid signature of the room's policy server %s", pol.via)
		}
	}
	p.outlierNID = outlierNID // outlier_promotion.go
	err = s.db.Write(ctx, func(tx storage.Tx) error {
		if isCreate(pdu) && p.outcome == Accepted {
			if err := insertRoom(ctx, tx, roomID, req.RoomVersion, s.now().UnixMilli()); err != nil {
				return err
			}
		}
		if isCreate(pdu) && p.outcome != Accepted {
			return mxerr.New(mxerr.Forbidden, "%s", p.reason) // no room to store it in
		}
		if err := s.commit(ctx, tx, p); err != nil {
			return err
		}
		if req.Delivered {
			_, err := tx.Exec(ctx, `INSERT INTO roomserver_delivered_events (event_nid) VALUES ($1)
				ON CONFLICT (event_nid) DO NOTHING`, p.row.NID)
			return err
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	resp := &InputEventResponse{EventID: p.row.EventID, Outcome: p.outcome, Reason: p.reason}
	if p.outcome == Accepted {
		resp.StreamPos = p.row.NID
	}
	return resp, nil, nil
}

// itoa is strconv.FormatInt for int64.
func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// checkCreatorsNotListed refuses, in room versions with privileged
// creators, power levels that give a room creator a level: "Room
// creators have infinitely high power level and cannot be specified in
// the m.room.power_levels event" (rooms/v12). The auth rules reject such
// an event (rooms/v12, "Authorization rules" 10.4); from a client it is
// a malformed request, 400 M_BAD_JSON, as Complement's
// TestMSC4289PrivilegedRoomCreators ("creator cannot set self in PL
// event") and TestMSC4289PrivilegedRoomCreators_Additional expect.
func (s *Server) checkCreatorsNotListed(ctx context.Context, roomID string, content []byte) error {
	version, err := s.RoomVersion(ctx, roomID)
	if err != nil {
		return err
	}
	impl, err := roomVersion(version)
	if err != nil || !impl.PrivilegedCreators() {
		return err
	}
	creates, err := s.IndexedStateKeys(ctx, roomID, "m.room.create", []string{""})
	if err != nil || len(creates) == 0 {
		return err
	}
	var pl struct {
		Users map[string]json.RawMessage `json:"users"`
	}
	if json.Unmarshal(content, &pl) != nil {
		return nil // the auth rules judge malformed levels
	}
	var c struct {
		AdditionalCreators []any `json:"additional_creators"`
	}
	_ = json.Unmarshal(creates[0].Content, &c)
	creators := []string{creates[0].Sender}
	for _, a := range c.AdditionalCreators {
		if u, ok := a.(string); ok {
			creators = append(creators, u)
		}
	}
	for _, u := range creators {
		if _, listed := pl.Users[u]; listed {
			return mxerr.New(mxerr.BadJSON, "%s is a creator of this room: creators have unlimited power and cannot be listed in users", u)
		}
	}
	return nil
}

// parseInputPDU parses a federation PDU of req's room version with the
// canonical-JSON check, refuses one over the size limit and returns its
// room ID: the checks InputEvent and CheckInputEvent share.
func parseInputPDU(req InputEventRequest) (gomatrixserverlib.PDU, string, error) {
	impl, err := roomVersion(req.RoomVersion)
	if err != nil {
		return nil, "", err
	}
	pdu, err := parseUntrustedPDU(impl, req.JSON)
	if err != nil {
		return nil, "", mxerr.Wrap(err, mxerr.BadJSON, "invalid PDU")
	}
	if n := len(pdu.JSON()); n > maxEventBytes {
		return nil, "", mxerr.New(mxerr.TooLarge, "PDU is %d bytes", n)
	}
	roomID, err := guard("room ID", func() (string, error) { return pdu.RoomID().String(), nil })
	if err != nil {
		return nil, "", mxerr.Wrap(err, mxerr.BadJSON, "invalid room ID")
	}
	return pdu, roomID, nil
}
