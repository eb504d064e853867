package syncapi

import (
	"context"
	"slices"

	"github.com/myelin-chat/myelin/roomserver"
)

// toDeviceLimit is how many to-device messages one /sync response
// carries at most; sliding sync's to_device extension may ask for fewer.
const toDeviceLimit = 100

// TokenPositions are the stream positions a sync token (next_batch, or
// the first part of a sliding sync pos) covers, for components that take
// sync tokens in their own endpoints (GET /keys/changes).
type TokenPositions struct {
	Room        int64
	ToDevice    int64
	DeviceLists int64
}

// DecodeToken reads a sync token this server issued. Anything else is
// M_INVALID_PARAM.
func DecodeToken(token string) (TokenPositions, error) {
	t, err := parseSyncToken(token)
	if err != nil {
		return TokenPositions{}, err
	}
	return TokenPositions{Room: t.Room, ToDevice: t.ToDevice, DeviceLists: t.DeviceLists}, nil
}

// MembershipChanges computes the MembershipDelta of userID's sync window
// (from, to] of the room stream, for device_lists (and GET
// /keys/changes). memberships are userID's current memberships
// (Rooms.UserMemberships); pass nil to have them read.
//
// It reads the window's net membership changes from the current state
// (Rooms.StateDelta of the rooms whose m.room.member events moved):
//   - a room userID is joined to now and whose membership changed in the
//     window: all its joined members, userID included, are in Joined;
//   - a room userID is joined to where others' membership changed: those
//     now joined are in Joined, the others in Left;
//   - a room userID left (or was removed from) in the window: its joined
//     members and those whose membership changed are in Left.
//
// A change of userID's own member event that is not a join or leave (a
// new display name) also counts: the delta may name more users than
// strictly started or stopped sharing a room, never fewer. The E2EE
// source drops from Left whoever still shares a room.
func MembershipChanges(ctx context.Context, rooms Rooms, userID string, memberships []roomserver.MembershipEntry, from, to int64) (MembershipDelta, error) {
	var delta MembershipDelta
	// from 0 is a real position: a sync token taken before this server
	// had any room event (a user whose first room is joined over
	// federation).
	if from < 0 || to <= from {
		return delta, nil
	}
	if memberships == nil {
		var err error
		if memberships, err = rooms.UserMemberships(ctx, userID); err != nil {
			return delta, err
		}
	}
	var joinedRooms []string
	for _, m := range memberships {
		if m.Membership == "join" {
			joinedRooms = append(joinedRooms, m.RoomID)
		}
	}
	moved, err := rooms.LatestPositions(ctx, joinedRooms, to, []string{"m.room.member"})
	if err != nil {
		return delta, err
	}
	joined, left := map[string]bool{}, map[string]bool{}
	// A user who joined a room is in Joined too, as Synapse has it, so
	// that the client refreshes its own device list (Complement
	// TestDeviceListsUpdateOverFederation expects it).
	selfJoined := false
	for _, m := range memberships {
		ownChange := m.StreamPos > from && m.StreamPos <= to
		switch {
		case m.Membership == "join" && ownChange:
			selfJoined = true
			members, err := joinedMembers(ctx, rooms, m.RoomID)
			if err != nil {
				return delta, err
			}
			for _, u := range members {
				joined[u] = true
			}
		case m.Membership == "join" && moved[m.RoomID] > from:
			changes, err := rooms.StateDelta(ctx, m.RoomID, from, to)
			if err != nil {
				return delta, err
			}
			for _, e := range changes {
				if e.Type != "m.room.member" || e.StateKey == nil || *e.StateKey == userID {
					continue
				}
				if e.StreamPos <= from {
					// Made current again without a new member event (a
					// resync's end revealing members that were in the
					// room all along, a state reset): /sync's state tells
					// it, the device lists do not (the member's own
					// updates reach them as for any member).
					continue
				}
				if e.Membership == "join" {
					joined[*e.StateKey] = true
				} else {
					left[*e.StateKey] = true
				}
			}
		case m.Membership != "join" && ownChange:
			members, err := joinedMembers(ctx, rooms, m.RoomID)
			if err != nil {
				return delta, err
			}
			changes, err := rooms.StateDelta(ctx, m.RoomID, from, to)
			if err != nil {
				return delta, err
			}
			for _, e := range changes {
				if e.Type == "m.room.member" && e.StateKey != nil {
					members = append(members, *e.StateKey)
				}
			}
			for _, u := range members {
				left[u] = true
			}
		}
	}
	delete(left, userID)
	if !selfJoined {
		delete(joined, userID)
	}
	delta.Joined, delta.Left = sortedSet(joined), sortedSet(left)
	return delta, nil
}

// joinedMembers lists a room's joined members from its current state.
func joinedMembers(ctx context.Context, rooms Rooms, roomID string) ([]string, error) {
	evs, err := rooms.IndexedCurrentState(ctx, roomID, []string{"m.room.member"}, false)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range evs {
		if e.Membership == "join" && e.StateKey != nil {
			out = append(out, *e.StateKey)
		}
	}
	return out, nil
}

func sortedSet(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
