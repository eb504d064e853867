package roomserver

import (
	"context"

	"github.com/myelin-chat/myelin/internal/mxerr"
)

// CheckInputEvent runs the checks InputEvent runs on a federation event
// (auth against its auth events, the state before it and the current
// state) and reports the outcome InputEvent would have, writing nothing.
// A missing prev or auth event is M_NOT_FOUND, as for InputEvent. It lets
// callers (and benchmarks, which time it apart from the write) learn an
// event's fate without persisting it. It asks no room's policy server
// (policy.go), so an event a policy server would have to sign is judged
// by the auth rules alone.
func (s *Server) CheckInputEvent(ctx context.Context, req InputEventRequest) (*InputEventResponse, error) {
	// The same parse (and canonical-JSON check) as InputEvent, so both
	// reach the same verdict.
	pdu, roomID, err := parseInputPDU(req)
	if err != nil {
		return nil, err
	}
	reader := s.db.Reader()
	if _, duplicate, err := heldOutlier(ctx, reader, pdu.EventID()); err != nil {
		return nil, err
	} else if duplicate {
		return &InputEventResponse{EventID: pdu.EventID(), Outcome: Duplicate}, nil
	}
	room := &roomRow{RoomID: roomID, Version: req.RoomVersion}
	if !isCreate(pdu) {
		if room, err = loadRoom(ctx, reader, roomID); err != nil {
			return nil, err
		}
	}
	if room.Version != req.RoomVersion {
		return nil, mxerr.New(mxerr.BadJSON, "room %s is version %s, not %s", roomID, room.Version, req.RoomVersion)
	}
	p, err := s.prepare(ctx, reader, nil, room, pdu)
	if err != nil {
		return nil, err
	}
	return &InputEventResponse{EventID: p.row.EventID, Outcome: p.outcome, Reason: p.reason}, nil
}
