package appservice

import (
	"context"
	"encoding/json"
	"slices"

	"github.com/myelin-chat/myelin/roomserver"
)

// MSC3202 transaction keys: the device lists, one-time key counts and
// unused fallback key types of a service's users, as /sync gives a
// client its own (client-server-api, "Extensions to /sync" of
// end-to-end encryption), keyed by user and device.
const (
	deviceListsKey    = "org.matrix.msc3202.device_lists"
	otkCountKey       = "org.matrix.msc3202.device_one_time_keys_count"
	fallbackTypesKey  = "org.matrix.msc3202.device_unused_fallback_key_types"
	msc3202StreamRead = 100 // rows read from each stream per transaction
)

// Keys is what the senders read of the key server for MSC3202, for the
// services that opted in (Registration.ToDevice).
type Keys interface {
	// DeviceListPosition is the device-list stream head.
	DeviceListPosition(ctx context.Context) (int64, error)
	// DeviceListChangesAfter returns the first limit device-list changes
	// above after, in position order; positions commit in order.
	DeviceListChangesAfter(ctx context.Context, after int64, limit int) ([]DeviceListChange, error)
	// KeyCountPosition is the key-count change stream head.
	KeyCountPosition(ctx context.Context) (int64, error)
	// KeyCountChangesAfter returns the first limit devices, of users a
	// service that opted in owns, whose latest key-count change is above
	// after, in position order; positions commit in order.
	KeyCountChangesAfter(ctx context.Context, after int64, limit int) ([]KeyCountChange, error)
	// KeyCounts returns the current one-time key counts (algorithms with
	// none left out) and unused fallback key types of each device, read
	// after every change already read from KeyCountChangesAfter (so from
	// the database, not a cache that may lag a commit):
	// out[i] answers devices[i]. A device without keys has an empty map
	// and an empty list.
	KeyCounts(ctx context.Context, devices []Device) ([]DeviceKeyCounts, error)
}

// DeviceListChange is one device-list stream row.
type DeviceListChange struct {
	Position int64
	UserID   string
}

// KeyCountChange says a device's key counts changed at Position.
type KeyCountChange struct {
	Position         int64
	UserID, DeviceID string
}

// Device names a user's device.
type Device struct{ UserID, DeviceID string }

// DeviceKeyCounts is one device's one-time key counts and unused fallback
// key types.
type DeviceKeyCounts struct {
	OneTimeKeys    map[string]int
	UnusedFallback []string
}

// msc3202Cursor is where a sender is in the two key server streams.
type msc3202Cursor struct{ deviceLists, keyCounts int64 }

// msc3202Data is what one transaction carries of MSC3202.
type msc3202Data struct {
	changed, left []string
	otk           map[string]map[string]map[string]int
	fallback      map[string]map[string][]string
}

func (d *msc3202Data) empty() bool {
	return len(d.changed) == 0 && len(d.left) == 0 && len(d.otk) == 0
}

// addTo puts the data under MSC3202's keys; empty parts are left out
// (MSC3202: every new field may be omitted when there is nothing to say).
func (d *msc3202Data) addTo(txn map[string]any) {
	if len(d.changed) > 0 || len(d.left) > 0 {
		txn[deviceListsKey] = map[string][]string{"changed": nonNil(d.changed), "left": nonNil(d.left)}
	}
	if len(d.otk) > 0 {
		txn[otkCountKey] = d.otk
		txn[fallbackTypesKey] = d.fallback
	}
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// msc3202 builds the MSC3202 part of the next transaction from cur and
// the room events of this step (whose memberships start or end the
// sharing of rooms), and returns where each key server stream ends.
//
// Device lists follow /sync's device_lists for the service's users taken
// together (client-server-api, "Tracking the device list for a user"):
// changed holds each user whose device list changed (a device-list stream
// row) and who is one of the service's users or now shares a joined room
// with one, and each user who started sharing a room with them in these
// events (either side joined) and still does; left holds each user who
// stopped sharing a room with them in these events (either side left or
// was banned) and now shares none. Whether rooms are shared is read at
// build time, so a join and a leave in one step count as the later state
// says. The service's own users are never in left. As for /sync
// (syncapi.MembershipChanges), a member event that changes no membership
// (a new display name) counts as a join: changed may name more users than
// strictly started sharing a room, never fewer; when one of the service's
// users joins, every member of the room is named.
//
// Key counts: each device of the service's users whose one-time or
// fallback keys changed (an upload of them, a claim of one) since the
// stream position of the last transaction is in the next transaction,
// with its counts read after that change; a device that changed several
// times is in it once, with counts read after the last change read. A
// device whose counts change again is in a later transaction, so the last
// counts a service received for a device are never older than its last
// change: a service is never left with a stale count. Devices without a
// change are left out (MSC3202 allows this); a deleted device is left
// out too (its device-list change says it is gone).
func (snd *sender) msc3202(ctx context.Context, cur msc3202Cursor, events []memberChange, ic *interestCache) (msc3202Data, msc3202Cursor, error) {
	keys, reg, server := snd.s.deps.Keys, snd.reg, snd.s.deps.ServerName
	next := cur
	var data msc3202Data

	changed, left := map[string]bool{}, map[string]bool{}
	rows, err := keys.DeviceListChangesAfter(ctx, cur.deviceLists, msc3202StreamRead)
	if err != nil {
		return data, cur, err
	}
	if len(rows) > 0 {
		next.deviceLists = max(cur.deviceLists, rows[len(rows)-1].Position)
	}
	for _, r := range rows {
		if changed[r.UserID] {
			continue
		}
		ok := reg.OwnsUser(r.UserID, server)
		if !ok {
			if ok, err = snd.sharesRoom(ctx, r.UserID, ic); err != nil {
				return data, cur, err
			}
		}
		if ok {
			changed[r.UserID] = true
		}
	}
	// Who may have started or stopped sharing a room with the service's
	// users, from this step's membership events.
	joined, parted := map[string]bool{}, map[string]bool{}
	// Whether one of the service's users is joined to a room now, per
	// room: another user's join or leave counts only there, so a service
	// never hears of users in rooms it has no user in (a leave elsewhere
	// is not a stop of sharing with the service's users).
	served := map[string]bool{}
	hasServiceUser := func(roomID string) (bool, error) {
		if v, ok := served[roomID]; ok {
			return v, nil
		}
		members, err := snd.joinedUsers(ctx, roomID, ic)
		if err != nil {
			return false, err
		}
		v := slices.ContainsFunc(members, func(u string) bool { return reg.OwnsUser(u, server) })
		served[roomID] = v
		return v, nil
	}
	for _, m := range events {
		into := joined
		if m.membership != "join" {
			into = parted
		}
		if !reg.OwnsUser(m.userID, server) {
			ok, err := hasServiceUser(m.roomID)
			if err != nil {
				return data, cur, err
			}
			if ok {
				into[m.userID] = true
			}
			continue
		}
		// One of the service's users joined or left: every current
		// member of the room starts or may have stopped sharing it.
		members, err := snd.joinedUsers(ctx, m.roomID, ic)
		if err != nil {
			return data, cur, err
		}
		for _, u := range members {
			into[u] = true
		}
	}
	for _, u := range sortedSet(joined, parted) {
		if reg.OwnsUser(u, server) {
			continue
		}
		shares, err := snd.sharesRoom(ctx, u, ic)
		if err != nil {
			return data, cur, err
		}
		switch {
		case shares && joined[u]:
			changed[u] = true
		case !shares && parted[u]:
			left[u] = true
		}
	}
	for u := range left {
		delete(changed, u)
	}
	data.changed, data.left = sortedSet(changed), sortedSet(left)

	counts, err := keys.KeyCountChangesAfter(ctx, cur.keyCounts, msc3202StreamRead)
	if err != nil {
		return data, cur, err
	}
	if len(counts) > 0 {
		next.keyCounts = max(cur.keyCounts, counts[len(counts)-1].Position)
	}
	var devices []Device
	for _, c := range counts {
		if reg.OwnsUser(c.UserID, server) {
			devices = append(devices, Device{UserID: c.UserID, DeviceID: c.DeviceID})
		}
	}
	if len(devices) > 0 {
		kc, err := keys.KeyCounts(ctx, devices)
		if err != nil {
			return data, cur, err
		}
		data.otk = map[string]map[string]map[string]int{}
		data.fallback = map[string]map[string][]string{}
		for i, d := range devices {
			if data.otk[d.UserID] == nil {
				data.otk[d.UserID] = map[string]map[string]int{}
				data.fallback[d.UserID] = map[string][]string{}
			}
			otk := kc[i].OneTimeKeys
			if otk == nil {
				otk = map[string]int{}
			}
			data.otk[d.UserID][d.DeviceID] = otk
			data.fallback[d.UserID][d.DeviceID] = nonNil(slices.Sorted(slices.Values(kc[i].UnusedFallback)))
		}
	}
	return data, next, nil
}

// memberChange is a membership event of the step: userID's membership
// in roomID became membership ("join" for a join, anything else for a
// leave or ban; invites and knocks are not collected).
type memberChange struct{ roomID, userID, membership string }

// memberChanges picks the joins, leaves and bans out of events.
func memberChanges(events []*roomserver.Event) []memberChange {
	var out []memberChange
	for _, ev := range events {
		if ev.Type != "m.room.member" || ev.StateKey == nil {
			continue
		}
		membership := ev.Membership
		if membership == "" {
			var c struct {
				Membership string `json:"membership"`
			}
			if json.Unmarshal(ev.Content, &c) != nil {
				continue
			}
			membership = c.Membership
		}
		if membership == "join" || membership == "leave" || membership == "ban" {
			out = append(out, memberChange{roomID: ev.RoomID, userID: *ev.StateKey, membership: membership})
		}
	}
	return out
}

// joinedUsers returns a room's joined users, through ic.
func (snd *sender) joinedUsers(ctx context.Context, roomID string, ic *interestCache) ([]string, error) {
	if joined, ok := ic.members[roomID]; ok {
		return joined, nil
	}
	joined, err := snd.s.deps.Rooms.JoinedUsers(ctx, roomID)
	if err != nil {
		return nil, err
	}
	ic.members[roomID] = joined
	return joined, nil
}

// sharesRoom says whether userID is joined to a room one of the
// service's users is joined to (now).
func (snd *sender) sharesRoom(ctx context.Context, userID string, ic *interestCache) (bool, error) {
	if ok, known := ic.sharing[userID]; known {
		return ok, nil
	}
	rooms, err := snd.s.deps.Rooms.JoinedRooms(ctx, userID)
	if err != nil {
		return false, err
	}
	ok := false
	for _, roomID := range rooms {
		if ok, err = snd.hasServiceUser(ctx, roomID, ic); err != nil {
			return false, err
		}
		if ok {
			break
		}
	}
	ic.sharing[userID] = ok
	return ok, nil
}

// hasServiceUser says whether one of the service's users is joined to
// roomID.
func (snd *sender) hasServiceUser(ctx context.Context, roomID string, ic *interestCache) (bool, error) {
	if ok, known := ic.withUser[roomID]; known {
		return ok, nil
	}
	joined, err := snd.joinedUsers(ctx, roomID, ic)
	if err != nil {
		return false, err
	}
	ok := slices.ContainsFunc(joined, func(u string) bool { return snd.reg.OwnsUser(u, snd.s.deps.ServerName) })
	ic.withUser[roomID] = ok
	return ok, nil
}

// sortedSet returns the keys of the sets, sorted, once each.
func sortedSet(sets ...map[string]bool) []string {
	var out []string
	for _, s := range sets {
		for k := range s {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
