package homeserver

import (
	"context"
	"math"

	"github.com/myelin-chat/myelin/appservice"
	"github.com/myelin-chat/myelin/clientapi"
	"github.com/myelin-chat/myelin/keyserver"
)

// asEphemeral is the application service senders' view of typing,
// receipts and presence (appservice cannot import clientapi, which reads
// its registry).
type asEphemeral struct {
	client *clientapi.Server
	// now returns the current time in milliseconds, for last_active_ago.
	now func() int64
}

var _ appservice.Ephemeral = asEphemeral{}

func (e asEphemeral) ReceiptsAfter(ctx context.Context, after int64, limit int) ([]appservice.Receipt, error) {
	rs, err := e.client.ReceiptsAfter(ctx, after, limit)
	if err != nil {
		return nil, err
	}
	out := make([]appservice.Receipt, len(rs))
	for i, r := range rs {
		out[i] = appservice.Receipt{RoomID: r.RoomID, UserID: r.UserID, Type: r.Type, EventID: r.EventID,
			ThreadID: r.ThreadID, TS: r.TS, Position: r.Position}
	}
	return out, nil
}

func (e asEphemeral) PresenceAfter(ctx context.Context, after int64, limit int) ([]appservice.Presence, error) {
	ps, err := e.client.PresenceAfter(ctx, after, limit)
	if err != nil {
		return nil, err
	}
	now := e.now()
	out := make([]appservice.Presence, len(ps))
	for i, p := range ps {
		out[i] = appservice.Presence{UserID: p.UserID, Content: p.Content(now), Position: p.Position}
	}
	return out, nil
}

func (e asEphemeral) TypingChangedAfter(after int64, limit int) ([]appservice.TypingRoom, int64) {
	rooms, head := e.client.TypingChangedAfter(after, limit)
	out := make([]appservice.TypingRoom, len(rooms))
	for i, r := range rooms {
		out[i] = appservice.TypingRoom{RoomID: r.RoomID, UserIDs: r.UserIDs, Changed: r.Changed}
	}
	return out, head
}

func (e asEphemeral) Heads(ctx context.Context) (receipts, presence int64, err error) {
	if _, receipts, err = e.client.ReceiptsSince(ctx, "", nil, 0); err != nil {
		return 0, 0, err
	}
	_, presence, err = e.client.PresenceSince(ctx, math.MaxInt64)
	return receipts, presence, err
}

// asToDevice is the application service senders' view of the to-device
// inboxes (MSC2409/MSC4203).
type asToDevice struct{ keys *keyserver.Server }

var _ appservice.ToDevice = asToDevice{}

func (d asToDevice) ToDevicePosition(ctx context.Context) (int64, error) {
	return d.keys.ToDevicePosition(ctx)
}

func (d asToDevice) ToDeviceAfter(ctx context.Context, after int64, limit int) ([]appservice.ToDeviceMessage, error) {
	ms, err := d.keys.ToDeviceAfter(ctx, after, limit)
	if err != nil {
		return nil, err
	}
	out := make([]appservice.ToDeviceMessage, len(ms))
	for i, m := range ms {
		out[i] = appservice.ToDeviceMessage{Position: m.Position, UserID: m.UserID, DeviceID: m.DeviceID,
			Sender: m.Sender, Type: m.Type, Content: m.Content}
	}
	return out, nil
}

// asKeys is the application service senders' view of the key server for
// MSC3202 (device lists and key counts).
type asKeys struct{ keys *keyserver.Server }

var _ appservice.Keys = asKeys{}

func (k asKeys) DeviceListPosition(ctx context.Context) (int64, error) {
	return k.keys.DeviceListPosition(ctx)
}

func (k asKeys) DeviceListChangesAfter(ctx context.Context, after int64, limit int) ([]appservice.DeviceListChange, error) {
	cs, err := k.keys.DeviceListChangesAfter(ctx, after, limit)
	if err != nil {
		return nil, err
	}
	out := make([]appservice.DeviceListChange, len(cs))
	for i, c := range cs {
		out[i] = appservice.DeviceListChange{Position: c.Position, UserID: c.UserID}
	}
	return out, nil
}

func (k asKeys) KeyCountPosition(ctx context.Context) (int64, error) {
	return k.keys.KeyCountPosition(ctx)
}

func (k asKeys) KeyCountChangesAfter(ctx context.Context, after int64, limit int) ([]appservice.KeyCountChange, error) {
	cs, err := k.keys.KeyCountChangesAfter(ctx, after, limit)
	if err != nil {
		return nil, err
	}
	out := make([]appservice.KeyCountChange, len(cs))
	for i, c := range cs {
		out[i] = appservice.KeyCountChange{Position: c.Position, UserID: c.UserID, DeviceID: c.DeviceID}
	}
	return out, nil
}

func (k asKeys) KeyCounts(ctx context.Context, devices []appservice.Device) ([]appservice.DeviceKeyCounts, error) {
	refs := make([]keyserver.DeviceRef, len(devices))
	for i, d := range devices {
		refs[i] = keyserver.DeviceRef{UserID: d.UserID, DeviceID: d.DeviceID}
	}
	cs, err := k.keys.KeyCountsOfDevicesFromDB(ctx, refs)
	if err != nil {
		return nil, err
	}
	out := make([]appservice.DeviceKeyCounts, len(cs))
	for i, c := range cs {
		out[i] = appservice.DeviceKeyCounts{OneTimeKeys: c.OneTimeKeys, UnusedFallback: c.UnusedFallback}
	}
	return out, nil
}

// watchKeyCounts says whether a service that receives MSC3202's key
// counts (a URL, and the to-device opt-in) owns userID.
func watchKeyCounts(reg *appservice.Registry, serverName string) func(userID string) bool {
	var watching []*appservice.Registration
	for _, r := range reg.All() {
		if r.URL != "" && r.ToDevice {
			watching = append(watching, r)
		}
	}
	if len(watching) == 0 {
		return nil
	}
	return func(userID string) bool {
		for _, r := range watching {
			if r.OwnsUser(userID, serverName) {
				return true
			}
		}
		return false
	}
}
