package federationapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sync"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/roomserver"
)

// Gap filling for inbound events. For an event pulled by
// get_missing_events (the oldest it returned) whose own prev events we
// lack, and for a local user's membership event a resident server
// accepted, we ask the origin for the state at each missing prev event
// (GET /state_ids, plus the prev event itself), fetch the events of it we
// lack (GET /event), and input the event with that state
// (roomserver.InputWithState), which resolves it against ours. A PUSHED
// PDU never gets here: if get_missing_events does not connect it, it is
// refused (send.go, arrival), as the pusher's claim about the state would
// otherwise become the room's state.
// Spec: server-server-api, "Retrieving events", "GET /state_ids".

const (
	// maxGapFetch bounds the events fetched to fill one gap.
	maxGapFetch = 2000
	// gapFetchers is how many /event requests run at once.
	gapFetchers = 8
)

// fillGap inputs p with the state after its missing prev events, from
// origin.
func (s *Server) fillGap(ctx context.Context, origin string, p *parsedPDU) (*roomserver.InputEventResponse, error) {
	roomID := p.pdu.RoomID().String()
	// Prev events not held, and those held only as outliers (their state
	// is unknown: roomserver.UnconnectedEvents).
	unconnected, err := s.rooms.UnconnectedEvents(ctx, p.pdu.PrevEventIDs())
	if err != nil {
		return nil, err
	}
	var missing []string
	for _, id := range p.pdu.PrevEventIDs() {
		if slices.Contains(unconnected, id) {
			missing = append(missing, id)
		} else if _, _, err := s.rooms.FederationEvent(ctx, id); mxerr.Is(err, mxerr.NotFound) {
			missing = append(missing, id)
		} else if err != nil {
			return nil, err
		}
	}
	if len(missing) == 0 {
		return nil, fmt.Errorf("no prev event of %s is missing", p.pdu.EventID())
	}
	f := &gapFetch{s: s, origin: origin, roomID: roomID, version: p.version, got: map[string]json.RawMessage{}}
	req := roomserver.InputWithStateRequest{RoomVersion: p.version, JSON: p.json}
	authIDs := map[string]bool{}
	for _, prev := range missing {
		at, err := f.stateAt(ctx, prev)
		if err != nil {
			return nil, err
		}
		// The state after prev: the state at (before) it, with prev
		// itself if it is a state event.
		state := map[string]json.RawMessage{}
		keyOf := map[[2]string]string{}
		for i, id := range append([]string{prev}, at.stateIDs...) {
			raw := at.event
			if i > 0 {
				raw = at.state[i-1]
			}
			var head struct {
				Type     string  `json:"type"`
				StateKey *string `json:"state_key"`
			}
			if json.Unmarshal(raw, &head) != nil || head.StateKey == nil {
				if i == 0 {
					continue // prev is not a state event
				}
				return nil, fmt.Errorf("state_ids at %s names %s, not a state event", prev, id)
			}
			k := [2]string{head.Type, *head.StateKey}
			if old, ok := keyOf[k]; ok {
				if i > 0 && old != prev {
					return nil, fmt.Errorf("state_ids at %s names two events for (%s, %s)", prev, k[0], k[1])
				}
				continue // prev replaces the state before it
			}
			keyOf[k] = id
			state[id] = raw
		}
		list := make([]json.RawMessage, 0, len(state))
		for _, raw := range state {
			list = append(list, raw)
		}
		req.PrevStates = append(req.PrevStates, list)
		for _, id := range at.authIDs() {
			authIDs[id] = true
		}
	}
	var chain []string
	for id := range authIDs {
		chain = append(chain, id)
	}
	auth, err := f.events(ctx, chain)
	if err != nil {
		return nil, err
	}
	req.AuthEvents = auth
	return s.rooms.InputWithState(ctx, req)
}

// gapFetch fetches events of one room from one server, skipping those
// the roomserver holds and checking each (format, signatures, hash).
type gapFetch struct {
	s               *Server
	origin, roomID  string
	version         string
	mu              sync.Mutex
	got             map[string]json.RawMessage
	fetched, failed int
}

// stateAtEvent is the state at (before) an event as the origin gave it.
type stateAtEvent struct {
	event        json.RawMessage   // the event itself
	stateIDs     []string          // pdu_ids
	state        []json.RawMessage // the events of stateIDs, in order
	authChainIDs []string          // auth_chain_ids
}

// authIDs are the events the state's events need for their own auth
// checks: the auth chain, and the state itself — the state before the
// event is given too, though the event may replace one of its events:
// the event's own auth events are among them (Complement
// TestMSC4297StateResolutionV2_1_*).
func (a *stateAtEvent) authIDs() []string {
	return append(slices.Clone(a.authChainIDs), a.stateIDs...)
}

// stateAt asks the origin for the state at eventID (GET /state_ids) and
// fetches the event and the state's events (events: those held are not
// fetched, the others are checked).
// Spec: server-server-api, "GET /_matrix/federation/v1/state_ids/{roomId}".
func (f *gapFetch) stateAt(ctx context.Context, eventID string) (*stateAtEvent, error) {
	var ids struct {
		PDUIDs       []string `json:"pdu_ids"`
		AuthChainIDs []string `json:"auth_chain_ids"`
	}
	uri := "/_matrix/federation/v1/state_ids/" + pathEscape(f.roomID) + "?" + url.Values{"event_id": {eventID}}.Encode()
	if err := f.s.client.signed(ctx, f.origin, http.MethodGet, uri, nil, &ids); err != nil {
		return nil, fmt.Errorf("state_ids at %s: %w", eventID, err)
	}
	if len(ids.PDUIDs)+len(ids.AuthChainIDs)+1 > maxGapFetch {
		return nil, fmt.Errorf("state at %s is too large (%d events)", eventID, len(ids.PDUIDs)+len(ids.AuthChainIDs))
	}
	evs, err := f.events(ctx, append([]string{eventID}, ids.PDUIDs...))
	if err != nil {
		return nil, err
	}
	return &stateAtEvent{event: evs[0], stateIDs: ids.PDUIDs, state: evs[1:], authChainIDs: ids.AuthChainIDs}, nil
}

// events returns the JSON of each of ids, in order: held ones from the
// roomserver, the others from the origin. Any event that cannot be had
// or fails its checks fails the whole.
func (f *gapFetch) events(ctx context.Context, ids []string) ([]json.RawMessage, error) {
	out := make([]json.RawMessage, len(ids))
	var todo []int
	for i, id := range ids {
		f.mu.Lock()
		raw, ok := f.got[id]
		f.mu.Unlock()
		if ok {
			out[i] = raw
			continue
		}
		ev, _, err := f.s.rooms.FederationEvent(ctx, id)
		switch {
		case err == nil && ev.RoomID == f.roomID:
			out[i] = ev.JSON
		case err == nil:
			return nil, fmt.Errorf("event %s is in another room", id)
		case mxerr.Is(err, mxerr.NotFound):
			todo = append(todo, i)
		default:
			return nil, err
		}
	}
	if f.fetched+len(todo) > maxGapFetch {
		return nil, fmt.Errorf("more than %d events to fetch", maxGapFetch)
	}
	f.fetched += len(todo)
	errs := make([]error, len(ids))
	sem := make(chan struct{}, gapFetchers)
	var wg sync.WaitGroup
	for _, i := range todo {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer func() { <-sem; wg.Done() }()
			out[i], errs[i] = f.fetch(ctx, ids[i])
		}(i)
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// missingEvent is an event of the state or auth chain at a gap that the
// origin, which named it, answers 404 for.
type missingEvent struct {
	id  string
	err error
}

func (m missingEvent) Error() string { return fmt.Sprintf("event %s: %v", m.id, m.err) }

// unobtainable reports whether a gap could not be filled because an event
// it needs cannot be had: the origin answers 404 for an event its
// state_ids named, or the roomserver still lacks an auth event after all
// the origin gave. Events that need it cannot be authorised (checks 4
// and 5 of "Checks performed on receipt of a PDU"), so the PDU is
// rejected. A failed state_ids request, a network failure or a server
// error is not this: the gap may yet be filled another way, or later.
func unobtainable(err error) bool {
	var m missingEvent
	return errors.As(err, &m) || mxerr.Is(err, mxerr.NotFound)
}

// unobtainableGap is fillGap's failure for an event whose gap cannot be
// filled (unobtainable). The PDU it concerns, and one that follows it,
// are rejected.
type unobtainableGap struct {
	eventID, origin string
	err             error
}

func (u *unobtainableGap) Error() string {
	return fmt.Sprintf("the state before %s cannot be had from %s: %v", u.eventID, u.origin, u.err)
}

func (u *unobtainableGap) Unwrap() error { return u.err }

// fetch is GET /event/{eventId} from the origin, checked.
func (f *gapFetch) fetch(ctx context.Context, id string) (json.RawMessage, error) {
	var resp struct {
		PDUs []json.RawMessage `json:"pdus"`
	}
	if err := f.s.client.signed(ctx, f.origin, http.MethodGet, "/_matrix/federation/v1/event/"+pathEscape(id), nil, &resp); err != nil {
		var re *RemoteError
		if errors.As(err, &re) && re.Status == http.StatusNotFound {
			return nil, missingEvent{id: id, err: err}
		}
		return nil, fmt.Errorf("event %s: %w", id, err)
	}
	if len(resp.PDUs) != 1 {
		return nil, fmt.Errorf("event %s: %d PDUs in the answer", id, len(resp.PDUs))
	}
	p, got, err := f.s.checkPDUVersion(ctx, resp.PDUs[0], f.version)
	if err != nil {
		return nil, fmt.Errorf("event %s: %w", id, err)
	}
	if got != id || p.pdu.RoomID().String() != f.roomID {
		return nil, fmt.Errorf("asked for %s in %s, got %s", id, f.roomID, got)
	}
	raw := json.RawMessage(p.pdu.JSON())
	f.mu.Lock()
	f.got[id] = raw
	f.mu.Unlock()
	return raw, nil
}
