package roomserver

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// UnknownEvents returns the IDs of ids this server has not stored at all
// (a rejected event counts as known), in the order given.
func (s *Server) UnknownEvents(ctx context.Context, ids []string) ([]string, error) {
	known, err := eventRowsByID(ctx, s.db.Reader(), ids)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, id := range ids {
		if _, ok := known[id]; !ok {
			out = append(out, id)
		}
	}
	return out, nil
}

// InputOutliers stores events of roomID fetched to complete the auth
// chain of an inbound PDU (from /event_auth or /event) as outliers:
// known events with no place in the timeline (stored soft-failed, with
// no state, like the state of a send_join response). The caller has
// checked their signatures and hashes. Each is authorised against its
// own auth_events only, which must be stored or in events; an event
// whose auth events are rejected, or which they do not allow, is stored
// rejected, so every event that names it in its auth_events is rejected
// in turn. An event whose auth events are unknown is left out. The
// result maps each event ID to its outcome; events already stored are
// Duplicate.
// Spec: server-server-api, "Checks performed on receipt of a PDU" (step
// 4: "Passes authorization rules based on the event's auth events,
// otherwise it is rejected") and "Retrieving events".
func (s *Server) InputOutliers(ctx context.Context, roomID string, events []json.RawMessage) (map[string]InputOutcome, error) {
	room, err := loadRoom(ctx, s.db.Reader(), roomID)
	if err != nil {
		return nil, err
	}
	impl, err := roomVersion(room.Version)
	if err != nil {
		return nil, err
	}
	byID := map[string]gomatrixserverlib.PDU{}
	var ids []string
	for _, raw := range events {
		pdu, err := NewUntrustedPDU(impl, raw)
		if err != nil {
			return nil, mxerr.Wrap(err, mxerr.BadJSON, "invalid outlier")
		}
		if pdu.RoomID().String() != roomID {
			return nil, mxerr.New(mxerr.BadJSON, "event %s is not in room %s", pdu.EventID(), roomID)
		}
		if n := len(pdu.JSON()); n > maxEventBytes {
			return nil, mxerr.New(mxerr.TooLarge, "event %s is %d bytes", pdu.EventID(), n)
		}
		if err := CheckPDUFieldLimits(pdu); err != nil {
			return nil, err
		}
		if _, dup := byID[pdu.EventID()]; !dup {
			byID[pdu.EventID()] = pdu
			ids = append(ids, pdu.EventID())
		}
	}
	// Auth events before the events they authorise; an auth cycle
	// (impossible for honest servers: event IDs are hashes) is dropped.
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(id string) bool
	visit = func(id string) bool {
		switch state[id] {
		case 1:
			return false
		case 2:
			return true
		}
		state[id] = 1
		for _, a := range byID[id].AuthEventIDs() {
			if _, ok := byID[a]; ok && !visit(a) {
				return false
			}
		}
		state[id] = 2
		order = append(order, id)
		return true
	}
	for _, id := range ids {
		visit(id)
	}

	unlock := s.lockRoom(ctx, roomID)
	defer unlock()
	out := map[string]InputOutcome{}
	err = s.db.Write(ctx, func(tx storage.Tx) error {
		clear(out)
		known, err := eventRowsByID(ctx, tx, ids)
		if err != nil {
			return err
		}
		stored := map[string]*eventRow{} // inserted here
		for _, id := range order {
			if _, ok := known[id]; ok {
				out[id] = Duplicate
				continue
			}
			pdu := byID[id]
			if isCreate(pdu) {
				continue // a room has one create event, stored with the room
			}
			rejected, complete, err := s.outlierRejected(ctx, tx, room, pdu, stored)
			if err != nil {
				return err
			}
			if !complete {
				continue
			}
			row := rowFromPDU(pdu)
			row.SoftFailed = true // an outlier: never a timeline event
			row.Rejected = rejected != ""
			if _, err := s.insertEvent(ctx, tx, row); err != nil {
				return err
			}
			stored[id] = row
			if row.Rejected {
				out[id] = Rejected
			} else {
				out[id] = Accepted
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// outlierRejected authorises pdu against its auth events (stored, or
// inserted in this transaction): why it is rejected ("" if allowed), and
// whether all its auth events are known.
func (s *Server) outlierRejected(ctx context.Context, tx storage.Tx, room *roomRow, pdu gomatrixserverlib.PDU, inserted map[string]*eventRow) (string, bool, error) {
	ids := pdu.AuthEventIDs()
	loaded, err := s.loadEventsByID(ctx, tx, tx, ids)
	if err != nil {
		return "", false, err
	}
	var auth []gomatrixserverlib.PDU
	seen := map[tuple]bool{}
	reason := ""
	for _, id := range ids {
		ae, ok := loaded[id]
		if !ok {
			return "", false, nil
		}
		row := ae.row
		if r, ok := inserted[id]; ok {
			row = r
		}
		switch {
		case row.RoomID != room.RoomID:
			reason = fmt.Sprintf("auth event %s is in another room", id)
		case row.Rejected:
			reason = fmt.Sprintf("auth event %s was rejected", id)
		case row.StateKey == nil:
			reason = fmt.Sprintf("auth event %s is not a state event", id)
		default:
			k := tuple{row.Type, *row.StateKey}
			if seen[k] {
				reason = fmt.Sprintf("two auth events for (%s, %s)", k.Type, k.StateKey)
			}
			seen[k] = true
		}
		auth = append(auth, ae.pdu)
	}
	if listsImpliedCreate(pdu) {
		reason = impliedCreateReason
	}
	if reason != "" {
		return reason, true, nil
	}
	if err := allowed(pdu, auth); err != nil {
		return fmt.Sprintf("not allowed by its auth events: %v", err), true, nil
	}
	return "", true, nil
}
