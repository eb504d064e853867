package federationapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"net/http"
	"slices"
	"sync"

	"github.com/go-chi/chi/v5"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
)

// Transaction limits. Spec: server-server-api, "Transactions".
const (
	maxTxnPDUs = 50
	maxTxnEDUs = 100
	maxSafeInt = 1<<53 - 1
	// maxMissingEvents bounds one get_missing_events request.
	maxMissingEvents = 20
)

// txnLocks serialise transactions per origin, so a retried transaction
// racing its first attempt is processed once.
var txnLocks [64]sync.Mutex

func lockOrigin(origin string) func() {
	h := fnv.New32a()
	_, _ = h.Write([]byte(origin))
	mu := &txnLocks[h.Sum32()%uint32(len(txnLocks))]
	mu.Lock()
	return mu.Unlock
}

type transaction struct {
	Origin         string            `json:"origin"`
	OriginServerTS int64             `json:"origin_server_ts"`
	PDUs           []json.RawMessage `json:"pdus"`
	EDUs           []json.RawMessage `json:"edus"`
}

// pduResult is one entry of the /send response's pdus map.
type pduResult struct {
	Error string `json:"error,omitempty"`
}

// sendTransaction is PUT /_matrix/federation/v1/send/{txnId}.
// Spec: server-server-api, "PUT /_matrix/federation/v1/send/{txnId}".
func (s *Server) sendTransaction(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	origin := originOf(ctx)
	txnID := chi.URLParam(r, "txnID")
	var txn transaction
	if err := httpx.DecodeJSON(r, &txn); err != nil {
		return err
	}
	if len(txn.PDUs) > maxTxnPDUs || len(txn.EDUs) > maxTxnEDUs {
		return mxerr.New(mxerr.BadJSON, "a transaction holds at most %d PDUs and %d EDUs", maxTxnPDUs, maxTxnEDUs)
	}
	unlock := lockOrigin(origin)
	defer unlock()
	var stored string
	err := s.db.Reader().QueryRow(ctx, `SELECT response FROM federation_inbound_txns WHERE origin = $1 AND txn_id = $2`,
		origin, txnID).Scan(&stored)
	if err == nil {
		w.Header().Set("Content-Type", "application/json")
		_, err = w.Write([]byte(stored))
		return err
	}
	if !storage.IsNoRows(err) {
		return err
	}
	results := s.processTransaction(ctx, origin, &txn)
	body, err := json.Marshal(map[string]any{"pdus": results})
	if err != nil {
		return err
	}
	err = s.db.Write(ctx, func(tx storage.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO federation_inbound_txns (origin, txn_id, response, received_ts) VALUES ($1, $2, $3, $4)
			ON CONFLICT (origin, txn_id) DO NOTHING`, origin, txnID, string(body), s.now().UnixMilli())
		return err
	})
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	_, err = w.Write(body)
	return err
}

// processTransaction handles each PDU on its own (one bad PDU never fails
// the rest: security case 6), then the EDUs.
func (s *Server) processTransaction(ctx context.Context, origin string, txn *transaction) map[string]pduResult {
	results := map[string]pduResult{}
	for i, raw := range txn.PDUs {
		eventID, err := s.processPDU(ctx, origin, raw)
		if eventID == "" {
			eventID = fmt.Sprintf("unparsable-pdu-%d", i)
		}
		if err != nil {
			s.log.Debug("inbound PDU not accepted", "origin", origin, "event_id", eventID, "err", err)
			results[eventID] = pduResult{Error: err.Error()}
			continue
		}
		results[eventID] = pduResult{}
	}
	for _, raw := range txn.EDUs {
		s.processEDU(ctx, origin, raw)
	}
	return results
}

// parsedPDU is an inbound PDU that passed the format, signature and hash
// checks.
type parsedPDU struct {
	pdu     gomatrixserverlib.PDU
	version string
	json    json.RawMessage
	// delivered: an event of ours a resident server took through
	// send_join or send_knock (roomserver.InputEventRequest.Delivered).
	delivered bool
}

// checkPDU runs checks 1–3 of "Checks performed on receipt of a PDU":
// a valid event of the room's version (sizes, depth, canonical JSON),
// signed by the sender's server (security case 9), and with a content
// hash that matches (or else it is redacted: security case 10).
func (s *Server) checkPDU(ctx context.Context, raw json.RawMessage, wantRoom string) (*parsedPDU, string, error) {
	roomID := gjson.GetBytes(raw, "room_id").Str
	if roomID == "" {
		return nil, "", errors.New("PDU has no room_id")
	}
	if wantRoom != "" && roomID != wantRoom {
		return nil, "", fmt.Errorf("PDU is in room %s, not %s", roomID, wantRoom)
	}
	version, err := s.rooms.RoomVersion(ctx, roomID)
	if err != nil {
		return nil, "", fmt.Errorf("room %s: %w", roomID, err)
	}
	return s.checkPDUVersion(ctx, raw, version)
}

func (s *Server) checkPDUVersion(ctx context.Context, raw json.RawMessage, version string) (*parsedPDU, string, error) {
	return s.checkPDUWith(ctx, raw, version, false)
}

// checkPDUWith is checkPDUVersion; senderOnly checks only the sender's
// server's signature (for an invite we have yet to sign ourselves).
func (s *Server) checkPDUWith(ctx context.Context, raw json.RawMessage, version string, senderOnly bool) (*parsedPDU, string, error) {
	impl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(version))
	if err != nil {
		return nil, "", err
	}
	// Security case 5: depth must be a safe, non-negative integer. Read
	// before parsing so a huge depth is never normalised.
	if d := gjson.GetBytes(raw, "depth"); d.Exists() && (d.Type != gjson.Number || d.Int() < 0 || d.Int() > maxSafeInt || d.Raw != itoa(d.Int())) {
		return nil, "", fmt.Errorf("depth %s out of range", d.Raw)
	}
	// Security case 4: bytes others could read differently are refused,
	// never normalised.
	if err := roomserver.CheckPDUJSON(raw); err != nil {
		return nil, gjson.GetBytes(raw, "event_id").Str, fmt.Errorf("invalid PDU: %w", err)
	}
	pdu, err := roomserver.NewUntrustedPDU(impl, raw)
	if err != nil {
		return nil, "", fmt.Errorf("invalid PDU: %w", err)
	}
	eventID := pdu.EventID()
	if len(pdu.JSON()) > 65536 {
		return nil, eventID, errors.New("PDU larger than 65536 bytes")
	}
	if err := roomserver.CheckPDUFieldLimits(pdu); err != nil {
		return nil, eventID, err
	}
	if _, err := spec.NewUserID(string(pdu.SenderID()), true); err != nil {
		return nil, eventID, fmt.Errorf("invalid sender %q", pdu.SenderID())
	}
	if senderOnly {
		redacted, rerr := impl.RedactEventJSON(pdu.JSON())
		if rerr != nil {
			return nil, eventID, rerr
		}
		err = s.keys.verify(ctx, domainOf(string(pdu.SenderID())), redacted, pdu.OriginServerTS(), impl.SignatureValidityCheck, forEvents)
	} else {
		err = gomatrixserverlib.VerifyEventSignatures(ctx, pdu, s.keys, func(_ spec.RoomID, sender spec.SenderID) (*spec.UserID, error) {
			return spec.NewUserID(string(sender), true)
		})
	}
	if err != nil {
		return nil, eventID, fmt.Errorf("bad signature: %w", err)
	}
	return &parsedPDU{pdu: pdu, version: version, json: raw}, eventID, nil
}

// processPDU checks and persists one PDU, fetching missing prev events
// from origin when the roomserver lacks them.
func (s *Server) processPDU(ctx context.Context, origin string, raw json.RawMessage) (string, error) {
	p, eventID, err := s.checkPDU(ctx, raw, "")
	if mxerr.Is(err, mxerr.NotFound) {
		// A room we do not hold: only the answer to a pending remote
		// invite or knock of one of our users is of interest.
		if id, handled, perr := s.pendingMembershipPDU(ctx, origin, raw); handled {
			return id, perr
		}
	}
	if err != nil {
		return eventID, err
	}
	roomID := p.pdu.RoomID().String()
	if err := s.checkACL(ctx, roomID, origin); err != nil {
		return eventID, err
	}
	resp, err := s.inputPushed(ctx, origin, p)
	var unanswered *gapUnanswered
	if errors.As(err, &unanswered) {
		// Nobody could fill the gap now: keep the PDU and retry in the
		// background (gap_pending.go). The /send answer still has an
		// error for it: it is not processed yet.
		return eventID, s.keepPending(ctx, origin, p, err)
	}
	if err == nil {
		s.recheckPending(ctx, roomID)
	}
	var gone *unobtainableGap
	if errors.As(err, &gone) {
		// Rejected, not stored: the events that would authorise it
		// cannot be had (Complement TestCorruptedAuthChain). As for any
		// rejection, no error in the /send answer (below).
		s.log.Debug("inbound PDU rejected", "origin", origin, "event_id", eventID, "reason", err)
		return eventID, nil
	}
	if err != nil {
		return eventID, err
	}
	if resp.Outcome == roomserver.Rejected {
		// A rejected PDU was handled: checked and stored as rejected,
		// so that events naming it are rejected too. The /send answer
		// has no error for it: an error says the PDU was not processed
		// (unverifiable, not connected to the room), and the sender
		// gains nothing by retrying a rejection. Synapse answers the same,
		// and Complement's MustSendTransaction relies on it (TestPartialStateJoin
		// "Rejected events remain rejected after resync").
		// Spec: server-server-api, "PUT /_matrix/federation/v1/send/{txnId}"
		// (PDU Processing Result).
		s.log.Debug("inbound PDU rejected", "origin", origin, "event_id", eventID, "reason", resp.Reason)
	}
	return eventID, nil
}

// inputPushed inputs p, pushed to us by origin, connecting it to the
// room if its prev or auth events are unknown; a server whose first join
// it is gets caught up.
func (s *Server) inputPushed(ctx context.Context, origin string, p *parsedPDU) (*roomserver.InputEventResponse, error) {
	newServer := s.serverJoiningBy(ctx, p)
	resp, err := s.input(ctx, p)
	if mxerr.Is(err, mxerr.NotFound) {
		resp, err = s.inputConnecting(ctx, origin, p, pushed)
	}
	if err == nil && resp.Outcome == roomserver.Accepted && newServer != "" {
		s.catchUpJoinedServer(ctx, p.pdu.RoomID().String(), newServer)
	}
	return resp, err
}

// arrival is how an event whose prev events are unknown reached this
// server. It decides what may stand in for prev events that stay
// unknown: the state at them, which the origin claims (GET /state_ids).
type arrival int

const (
	// pushed: sent to us (PUT /send). What lies between our forward
	// extremities and it is fetched (get_missing_events); a prev event
	// still unconnected after that refuses the PDU (not stored, an error
	// in the /send answer). Taking the pusher's word for the state at its
	// prev events would let any server in the room choose the room's
	// state: the PDU would become a forward extremity resting on nothing
	// but that claim. A server that sends an event can serve its prev
	// events, so refusing costs an honest server nothing; Synapse refuses
	// the same way ("isn't divulging details about prev_events"), and
	// Complement TestOutboundFederationIgnoresMissingEventWithBadJSONForRoomVersion6
	// forbids the state_ids request.
	pushed arrival = iota
	// ownMembership: a membership event of a local user that a resident server
	// accepted (send_join, send_knock). get_missing_events first, then,
	// for prev events still unconnected, the state at them from that
	// server, which this server trusts for the room's state at its join
	// anyway (the send_join answer).
	ownMembership
	// pulled: the oldest event get_missing_events returned, whose own
	// prev events lie beyond what it returned. The state at those comes
	// from the origin (never another get_missing_events round): the gap
	// is bounded by a PDU that was pushed and whose prev events it
	// connects, and the state is resolved against ours (gap.go).
	pulled
)

// inputConnecting inputs p, one of whose prev or auth events is unknown.
// Prev events come first: the events between our forward extremities and
// p (get_missing_events, unless p was pulled) and, for an event whose
// prev events are still unknown after that, the state at those prev
// events (gap.go) unless p was pushed (see arrival), which holds most of
// the auth events too. Only an event whose prev events are all known has
// its remaining auth events fetched (inputFetchingAuth). This is the
// order of server-server-api, "Checks performed on receipt of a PDU"
// (the state before the event comes from its prev events), and it asks
// origin only for what it must serve: the state at an event it sent, and
// the events that state names.
func (s *Server) inputConnecting(ctx context.Context, origin string, p *parsedPDU, how arrival) (*roomserver.InputEventResponse, error) {
	// Prev events held only as outliers count as missing: their state is
	// unknown (roomserver.UnconnectedEvents).
	missing, err := s.rooms.UnconnectedEvents(ctx, p.pdu.PrevEventIDs())
	if err != nil {
		return nil, err
	}
	answeredBy := origin
	if len(missing) > 0 && how != pulled {
		// Unknown prev events: fetch what lies between our forward
		// extremities and this event, then look again.
		by, ferr := s.fetchMissing(ctx, origin, p, how == pushed)
		if ferr != nil {
			var gone *unobtainableGap
			var unanswered *gapUnanswered
			if errors.As(ferr, &gone) {
				return nil, ferr // p follows an event whose gap cannot be filled
			}
			if errors.As(ferr, &unanswered) {
				return nil, fmt.Errorf("prev events %v of %s are unknown: %w", missing, p.pdu.EventID(), ferr)
			}
			return nil, fmt.Errorf("prev events %v of %s are unknown; fetching missing events: %v", missing, p.pdu.EventID(), ferr)
		}
		answeredBy = by
		if missing, err = s.rooms.UnconnectedEvents(ctx, p.pdu.PrevEventIDs()); err != nil {
			return nil, err
		}
	}
	if len(missing) > 0 && how == pushed && answeredBy != origin {
		// The origin did not answer; the server that did may not hold
		// the origin's newest events yet. Not a refusal by the origin:
		// the PDU is kept and the origin asked again later.
		return nil, fmt.Errorf("prev events %v of %s are unknown: %w", missing, p.pdu.EventID(),
			&gapUnanswered{asked: []string{origin, answeredBy}, err: fmt.Errorf("%s answered without reaching them", answeredBy)})
	}
	if len(missing) > 0 && how == pushed {
		return nil, mxerr.New(mxerr.Forbidden, "prev events %v of %s cannot be had from %s (get_missing_events did not reach them)",
			missing, p.pdu.EventID(), origin)
	}
	if len(missing) > 0 {
		// Still not connected: take the state at the missing prev
		// events from origin (gap.go).
		resp, gerr := s.fillGap(ctx, origin, p)
		if unobtainable(gerr) {
			return nil, &unobtainableGap{eventID: p.pdu.EventID(), origin: origin, err: gerr}
		}
		if gerr != nil {
			return nil, mxerr.New(mxerr.NotFound, "prev events %v of %s are unknown; filling the gap: %v", missing, p.pdu.EventID(), gerr)
		}
		return resp, nil
	}
	return s.inputFetchingAuth(ctx, origin, p)
}

func (s *Server) input(ctx context.Context, p *parsedPDU) (*roomserver.InputEventResponse, error) {
	return s.rooms.InputEvent(ctx, roomserver.InputEventRequest{RoomVersion: p.version, JSON: p.json, Delivered: p.delivered})
}

// fetchMissing asks origin for the events between our forward
// extremities and p (POST /get_missing_events) and inputs them oldest
// first; if origin does not answer, a few of the room's other servers are
// asked the same (askMissingEvents), and answeredBy is the server that
// answered. If none answers, it returns a *gapUnanswered. If the gap
// before one of the events cannot be filled (unobtainable), it returns
// that *unobtainableGap: p follows it.
//
// catchUp (p was pushed): a server whose first join reaches this server
// among those events is caught up (catchUpJoinedServer), as for a join
// pushed to us (processPDU). Which copy of a join arrives first is a
// race: the resident server relays it, and the joined server's own next
// event names it as a prev event, so a server cut off for a while often
// pulls the join from the joined server before the relay's retry
// arrives; the relay's copy, a duplicate by then, no longer shows a new
// server (TestJoinPulledByMissingEventsCatchesUpJoinedServer).
// Spec: server-server-api, "Retrieving events" (get_missing_events).
func (s *Server) fetchMissing(ctx context.Context, origin string, p *parsedPDU, catchUp bool) (answeredBy string, _ error) {
	roomID := p.pdu.RoomID().String()
	earliest, err := s.rooms.Extremities(ctx, roomID)
	if err != nil {
		return "", err
	}
	body := map[string]any{
		"earliest_events": earliest,
		"latest_events":   []string{p.pdu.EventID()},
		"limit":           maxMissingEvents,
		"min_depth":       0,
	}
	events, answeredBy, err := s.askMissingEvents(ctx, origin, roomID, body)
	if err != nil {
		return "", err
	}
	// Events another server gave are checked as the origin's are: each
	// signed by its sender's server, its hash, then the auth rules
	// (checkPDU, input); the server that relays them vouches for nothing.
	// The state at the oldest of them, if its prev events are unknown
	// too, comes from the server that answered (pulled, gap.go).
	origin = answeredBy
	if len(events) > maxMissingEvents {
		events = events[:maxMissingEvents]
	}
	var parsed []*parsedPDU
	for _, raw := range events {
		mp, _, err := s.checkPDU(ctx, raw, roomID)
		if err != nil {
			continue
		}
		parsed = append(parsed, mp)
	}
	sortByDepth(parsed)
	if catchUp && len(parsed) > 0 {
		before, err := s.rooms.JoinedServers(ctx, roomID)
		if err != nil {
			return "", err
		}
		defer s.catchUpServersJoinedSince(ctx, roomID, before)
	}
	inBatch := map[string]bool{}
	for _, mp := range parsed {
		inBatch[mp.pdu.EventID()] = true
	}
	for _, mp := range parsed {
		// The oldest of them may still miss prev events: they get the
		// state at those (never another get_missing_events round). One
		// that waits on an event of this batch that failed fails too,
		// without asking for state the failure already asked for.
		resp, err := s.input(ctx, mp)
		if mxerr.Is(err, mxerr.NotFound) {
			var unknown []string
			if unknown, err = s.rooms.UnconnectedEvents(ctx, mp.pdu.PrevEventIDs()); err == nil {
				if slices.ContainsFunc(unknown, func(id string) bool { return inBatch[id] }) {
					err = mxerr.New(mxerr.NotFound, "prev events %v of %s are unknown", unknown, mp.pdu.EventID())
				} else {
					resp, err = s.inputConnecting(ctx, origin, mp, pulled)
				}
			}
		}
		var gone *unobtainableGap
		if errors.As(err, &gone) {
			// What follows it, p included, cannot be authorised either;
			// asking for the state at a later event would not help.
			return "", fmt.Errorf("%s follows it: %w", p.pdu.EventID(), err)
		}
		if err != nil {
			s.log.Debug("missing event not accepted", "event_id", mp.pdu.EventID(), "err", err)
		} else if resp.Outcome == roomserver.Rejected {
			s.log.Debug("missing event rejected", "event_id", mp.pdu.EventID(), "reason", resp.Reason)
		}
	}
	return answeredBy, nil
}

// catchUpServersJoinedSince catches up (catchUpJoinedServer) each
// server joined to roomID now that was not among before.
func (s *Server) catchUpServersJoinedSince(ctx context.Context, roomID string, before []string) {
	now, err := s.rooms.JoinedServers(ctx, roomID)
	if err != nil {
		s.log.Warn("catch-up of joined servers: listing the room's servers", "room_id", roomID, "err", err)
		return
	}
	for _, server := range now {
		if server != s.serverName && !slices.Contains(before, server) {
			s.catchUpJoinedServer(ctx, roomID, server)
		}
	}
}

// Bounds on completing one PDU's auth chain.
const (
	maxAuthFetchEvents = 200
	maxAuthFetchRounds = 8
)

// inputFetchingAuth inputs p; if some of its auth events are unknown it
// first fetches them from origin, checks their signatures and hashes and
// stores them as outliers authorised by their own auth events (so a
// rejected auth event rejects p), then inputs p again.
// Spec: server-server-api, "Checks performed on receipt of a PDU" and
// "GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}".
func (s *Server) inputFetchingAuth(ctx context.Context, origin string, p *parsedPDU) (*roomserver.InputEventResponse, error) {
	resp, err := s.input(ctx, p)
	if !mxerr.Is(err, mxerr.NotFound) {
		return resp, err
	}
	missing, uerr := s.rooms.UnknownEvents(ctx, p.pdu.AuthEventIDs())
	if uerr != nil || len(missing) == 0 {
		return resp, err
	}
	if ferr := s.fetchAuthEvents(ctx, origin, p, missing); ferr != nil {
		return nil, fmt.Errorf("%v; fetching auth events: %v", err, ferr)
	}
	return s.input(ctx, p)
}

// fetchAuthEvents completes p's auth chain from origin: its /event_auth
// answer first, then /event for whatever is still missing (a server may
// not serve /event_auth, or serve an incomplete chain), round by round
// down the chain. Events that fail the signature or hash checks or are
// of another room are dropped.
func (s *Server) fetchAuthEvents(ctx context.Context, origin string, p *parsedPDU, missing []string) error {
	roomID := p.pdu.RoomID().String()
	got := map[string]gomatrixserverlib.PDU{}
	var order []string
	add := func(raw json.RawMessage, want string) {
		mp, id, err := s.checkPDUVersion(ctx, raw, p.version)
		if err != nil || mp.pdu.RoomID().String() != roomID || (want != "" && id != want) {
			s.log.Debug("fetched auth event dropped", "origin", origin, "event_id", id, "err", err)
			return
		}
		if _, ok := got[id]; !ok && len(got) < maxAuthFetchEvents {
			got[id] = mp.pdu
			order = append(order, id)
		}
	}
	var chain struct {
		AuthChain []json.RawMessage `json:"auth_chain"`
	}
	uri := "/_matrix/federation/v1/event_auth/" + pathEscape(roomID) + "/" + pathEscape(p.pdu.EventID())
	if err := s.client.signed(ctx, origin, http.MethodGet, uri, nil, &chain); err != nil {
		s.log.Debug("event_auth failed; fetching auth events one by one", "origin", origin, "event_id", p.pdu.EventID(), "err", err)
	}
	for _, raw := range chain.AuthChain {
		add(raw, "")
	}
	// Whatever the chain lacks, by /event, following auth_events.
	var others []string // the room's other servers, read on first need
	want := missing
	for round := 0; round < maxAuthFetchRounds && len(want) > 0 && len(got) < maxAuthFetchEvents; round++ {
		var next []string
		for _, id := range want {
			if _, ok := got[id]; ok {
				continue
			}
			if raw := s.fetchAuthEvent(ctx, origin, roomID, id, &others); raw != nil {
				add(raw, id)
			}
		}
		// The auth events of what we have that are neither fetched nor stored.
		var refs []string
		for _, id := range order {
			for _, a := range got[id].AuthEventIDs() {
				if _, ok := got[a]; !ok && !slices.Contains(refs, a) {
					refs = append(refs, a)
				}
			}
		}
		if len(refs) > 0 {
			unknown, err := s.rooms.UnknownEvents(ctx, refs)
			if err != nil {
				return err
			}
			next = unknown
		}
		want = next
	}
	if len(got) == 0 {
		return fmt.Errorf("neither %s nor the room's other servers gave any of the auth events %v", origin, missing)
	}
	events := make([]json.RawMessage, 0, len(order))
	for _, id := range order {
		events = append(events, got[id].JSON())
	}
	outcomes, err := s.rooms.InputOutliers(ctx, roomID, events)
	if err != nil {
		return err
	}
	for id, o := range outcomes {
		if o == roomserver.Rejected {
			s.log.Debug("fetched auth event rejected", "origin", origin, "event_id", id)
		}
	}
	return nil
}

// maxAuthFetchFallbacks bounds how many of the room's other servers
// fetchAuthEvent asks for one event the origin did not give.
const maxAuthFetchFallbacks = 5

// fetchAuthEvent fetches auth event id through /event from origin and,
// if origin does not give it, from up to maxAuthFetchFallbacks other
// servers of the room (*others caches their list, nil until first
// needed). Origin may not know yet that this server is in the room (our
// join reached it through the resident server, later than origin's event
// reached us) and refuse; a server this server joined through knows,
// and holds the event if origin's event is valid. Nothing the other
// servers give is trusted more than origin's answer: the caller checks
// signatures, hashes, room and event ID. An event given by nobody fails
// the PDU, as before.
// Spec: server-server-api, "GET /_matrix/federation/v1/event/{eventId}"
// (any server may be asked for an event it holds).
func (s *Server) fetchAuthEvent(ctx context.Context, origin, roomID, id string, others *[]string) json.RawMessage {
	get := func(server string) json.RawMessage {
		var txn struct {
			PDUs []json.RawMessage `json:"pdus"`
		}
		err := s.client.signed(ctx, server, http.MethodGet, "/_matrix/federation/v1/event/"+pathEscape(id), nil, &txn)
		if err != nil || len(txn.PDUs) != 1 {
			s.log.Debug("fetching auth event failed", "server", server, "event_id", id, "err", err)
			return nil
		}
		return txn.PDUs[0]
	}
	if raw := get(origin); raw != nil {
		return raw
	}
	if *others == nil {
		servers, err := s.rooms.JoinedServers(ctx, roomID)
		if err != nil {
			s.log.Debug("listing the room's servers", "room_id", roomID, "err", err)
		}
		*others = []string{}
		for _, d := range servers {
			if d != origin && d != s.serverName && len(*others) < maxAuthFetchFallbacks {
				*others = append(*others, d)
			}
		}
	}
	for _, server := range *others {
		if raw := get(server); raw != nil {
			return raw
		}
	}
	return nil
}

func sortByDepth(ps []*parsedPDU) {
	for i := 1; i < len(ps); i++ {
		for j := i; j > 0 && ps[j].pdu.Depth() < ps[j-1].pdu.Depth(); j-- {
			ps[j], ps[j-1] = ps[j-1], ps[j]
		}
	}
}

// guard turns a gomatrixserverlib panic into an error.
func guard[T any](fn func() (T, error)) (out T, err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("gomatrixserverlib panicked: %v", v)
		}
	}()
	return fn()
}
