package homeserver

import (
	"context"
	"encoding/json"

	"github.com/myelin-chat/myelin/keyserver"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/syncapi"
)

// syncE2EE is the key server as sync's E2EE source (syncapi.E2EE). keys
// is set once the key server is built, before any request is served: the
// key server is built after sync.
type syncE2EE struct {
	keys keyserver.API
}

var _ syncapi.E2EE = (*syncE2EE)(nil)

func (e *syncE2EE) E2EEHeads(ctx context.Context) (toDevice, deviceLists int64, err error) {
	if toDevice, err = e.keys.ToDevicePosition(ctx); err != nil {
		return 0, 0, err
	}
	deviceLists, err = e.keys.DeviceListPosition(ctx)
	return toDevice, deviceLists, err
}

func (e *syncE2EE) AckToDevice(ctx context.Context, userID, deviceID string, upTo int64) error {
	return e.keys.AckToDevice(ctx, userID, deviceID, upTo)
}

func (e *syncE2EE) ToDevice(ctx context.Context, userID, deviceID string, since, to int64, limit int) ([]json.RawMessage, int64, error) {
	evs, latest, err := e.keys.ToDeviceSince(ctx, userID, deviceID, since)
	if err != nil {
		return nil, 0, err
	}
	more := len(evs) == keyserver.ToDeviceBatchLimit
	if len(evs) > limit {
		evs, more = evs[:limit], true
		latest = evs[len(evs)-1].Position
	}
	out := make([]json.RawMessage, len(evs))
	for i, ev := range evs {
		if out[i], err = json.Marshal(ev); err != nil {
			return nil, 0, err
		}
	}
	if more {
		// The next token must stop at the last message sent, so the rest
		// come in the next response.
		return out, latest, nil
	}
	// Every message up to the head read for this response has been
	// returned (positions commit in order), so the token may move to it.
	return out, max(latest, to), nil
}

func (e *syncE2EE) DeviceListChanges(ctx context.Context, userID string, since, to int64, rooms syncapi.MembershipDelta) (syncapi.DeviceLists, error) {
	changed, left, err := e.keys.DeviceListChanges(ctx, userID, since, to,
		keyserver.MembershipDelta{Joined: rooms.Joined, Left: rooms.Left})
	return syncapi.DeviceLists{Changed: changed, Left: left}, err
}

func (e *syncE2EE) KeyCounts(ctx context.Context, userID, deviceID string) (map[string]int, []string, error) {
	return e.keys.KeyCounts(ctx, userID, deviceID)
}

// KeyCountsOfDevices implements syncapi.E2EEBatch.
func (e *syncE2EE) KeyCountsOfDevices(ctx context.Context, devices []syncapi.DeviceRef) ([]syncapi.DeviceKeyCounts, error) {
	refs := make([]keyserver.DeviceRef, len(devices))
	for i, d := range devices {
		refs[i] = keyserver.DeviceRef{UserID: d.UserID, DeviceID: d.DeviceID}
	}
	counts, err := e.keys.KeyCountsOfDevices(ctx, refs)
	if err != nil {
		return nil, err
	}
	out := make([]syncapi.DeviceKeyCounts, len(counts))
	for i, c := range counts {
		out[i] = syncapi.DeviceKeyCounts{OneTimeKeys: c.OneTimeKeys, UnusedFallback: c.UnusedFallback}
	}
	return out, nil
}

// keyChangesDelta gives GET /keys/changes the joins and leaves of a
// room-stream window, computed as /sync does.
func keyChangesDelta(rooms *roomserver.Server) func(ctx context.Context, userID string, from, to int64) (keyserver.MembershipDelta, error) {
	return func(ctx context.Context, userID string, from, to int64) (keyserver.MembershipDelta, error) {
		d, err := syncapi.MembershipChanges(ctx, rooms, userID, nil, from, to)
		return keyserver.MembershipDelta{Joined: d.Joined, Left: d.Left}, err
	}
}
