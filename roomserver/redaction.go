package roomserver

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"

	"github.com/myelin-chat/myelin/storage"
)

// applyRedactions is called for each newly accepted event: if it is a
// redaction whose target is known, or if an earlier accepted redaction
// was waiting for it, the target is replaced by its redacted copy.
// Each pair is considered once, so mutually-redacting events cannot loop
// (security case 17).
// Spec: client-server-api, "Redactions"; rooms/vN, "Redactions".
func (s *Server) applyRedactions(ctx context.Context, tx storage.Tx, room *roomRow, ev *loadedEvent) error {
	if ev.row.Redacts != nil {
		targets, err := s.loadEventsByID(ctx, tx, tx, []string{*ev.row.Redacts})
		if err != nil {
			return err
		}
		if target, ok := targets[*ev.row.Redacts]; ok {
			if err := s.redact(ctx, tx, room, ev, target); err != nil {
				return err
			}
		}
	}
	// This runs for every accepted event and almost always finds nothing,
	// so it must be an index probe. The room is checked in Go, not in SQL:
	// with room_id in the WHERE clause SQLite's planner walks the room's
	// (room_id, event_nid) index, reading every event of the room. The
	// rows are sorted in Go too: an ORDER BY here needs a sorter, whose
	// setup alone costs SQLite several times the probe.
	rows, err := queryEventRows(ctx, tx, `SELECT `+eventColumns+` FROM roomserver_events
		WHERE redacts = $1 AND NOT rejected AND NOT soft_failed`, ev.row.EventID)
	if err != nil {
		return err
	}
	slices.SortFunc(rows, func(a, b *eventRow) int { return cmp.Compare(a.NID, b.NID) })
	for _, r := range rows {
		if r.NID == ev.row.NID || r.RoomID != room.RoomID {
			continue
		}
		redaction, err := parseRow(room.Version, r)
		if err != nil {
			return err
		}
		if err := s.redact(ctx, tx, room, redaction, ev); err != nil {
			return err
		}
	}
	return nil
}

// redact applies redaction to target if it is valid; an invalid one is
// ignored (kept in the timeline, without effect).
func (s *Server) redact(ctx context.Context, tx storage.Tx, room *roomRow, redaction, target *loadedEvent) error {
	ok, err := s.redactionValid(ctx, tx, room, redaction, target)
	if err != nil || !ok {
		return err
	}
	impl, err := roomVersion(room.Version)
	if err != nil {
		return err
	}
	redacted, err := impl.RedactEventJSON([]byte(target.row.JSON))
	if err != nil {
		return fmt.Errorf("redacting %s: %w", target.row.EventID, err)
	}
	redacted, err = sjson.SetRawBytes(redacted, "unsigned.redacted_because", []byte(redaction.row.JSON))
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `UPDATE roomserver_events SET json = $1, redacted_because = $2 WHERE event_nid = $3`,
		string(redacted), redaction.row.EventID, target.row.NID); err != nil {
		return err
	}
	if target.row.StateKey != nil {
		// The room's guest_access may be this event, now without content.
		if err := s.guestAccessChanged(ctx, tx, room.RoomID, []tuple{{target.row.Type, *target.row.StateKey}}); err != nil {
			return err
		}
	}
	nid, id := target.row.NID, target.row.EventID
	s.events.drop(nid, id)
	// Once more right after the commit, on the committing goroutine: an
	// earlier write of the same batch may have cached the target's
	// unredacted parse in its own OnCommit hook, which runs before this
	// one. And again after the commit on this caller's goroutine, after
	// anything a reader put meanwhile from a read begun before the commit.
	tx.OnCommit(func() { s.events.drop(nid, id) })
	tx.AfterCommit(func() { s.events.drop(nid, id) })
	return nil
}

// redactionValid decides whether a redaction takes effect on target.
// Ignored: redactions of the create event, of themselves, of events in
// other rooms, of events already redacted, and — since rooms v3 defer
// the check to this point — redactions by a user who is neither the
// target's sender nor has the redact power level (v1/v2: same server is
// also enough).
func (s *Server) redactionValid(ctx context.Context, tx storage.Tx, room *roomRow, redaction, target *loadedEvent) (bool, error) {
	switch {
	case target.row.EventID == redaction.row.EventID,
		target.row.RoomID != redaction.row.RoomID,
		target.row.Rejected,
		target.row.RedactedBecause != nil,
		target.row.Type == "m.room.create":
		return false, nil
	}
	sender := redaction.row.Sender
	if sender == target.row.Sender {
		return true, nil
	}
	if room.Version == "1" || room.Version == "2" {
		if domainOf(sender) != "" && domainOf(sender) == domainOf(target.row.Sender) {
			return true, nil
		}
	}
	state, err := s.stateEventsFor(ctx, tx, tx, room, redaction.row.StateBefore, nil,
		[]tuple{{"m.room.create", ""}, {"m.room.power_levels", ""}})
	if err != nil {
		return false, err
	}
	return hasPower(room.Version, state, sender, func(pl *gomatrixserverlib.PowerLevelContent) int64 { return pl.Redact }), nil
}

// hasPower reports whether sender's power level reaches the level
// chosen from the power levels, in a state holding the create and power
// levels events. v12 creators have infinite power.
// Spec: client-server-api, "Permissions".
func hasPower(version string, state []gomatrixserverlib.PDU, sender string, level func(*gomatrixserverlib.PowerLevelContent) int64) bool {
	var create, plEvent gomatrixserverlib.PDU
	for _, e := range state {
		switch e.Type() {
		case "m.room.create":
			create = e
		case "m.room.power_levels":
			plEvent = e
		}
	}
	if create == nil {
		return false
	}
	impl, err := roomVersion(version)
	if err != nil {
		return false
	}
	if impl.PrivilegedCreators() && isCreator(create, sender) {
		return true
	}
	if plEvent == nil {
		// No power levels: the creator has 100, everyone else 0, and
		// every action needs 0 except state (50).
		// Spec: client-server-api, "m.room.power_levels".
		pl := gomatrixserverlib.PowerLevelContent{}
		pl.Defaults()
		if string(create.SenderID()) == sender || gjson.GetBytes(create.Content(), "creator").Str == sender {
			return true
		}
		return level(&pl) <= 0
	}
	pl, err := plEvent.PowerLevels()
	if err != nil {
		return false
	}
	return pl.UserLevel(spec.SenderID(sender)) >= level(pl)
}

// isCreator reports whether user is a v12 room creator: the create
// event's sender or one of its additional_creators.
func isCreator(create gomatrixserverlib.PDU, user string) bool {
	if string(create.SenderID()) == user {
		return true
	}
	var c struct {
		AdditionalCreators []string `json:"additional_creators"`
	}
	if json.Unmarshal(create.Content(), &c) != nil {
		return false
	}
	for _, u := range c.AdditionalCreators {
		if u == user {
			return true
		}
	}
	return false
}

func domainOf(userID string) string {
	for i := 0; i < len(userID); i++ {
		if userID[i] == ':' {
			return userID[i+1:]
		}
	}
	return ""
}
