package appservice

import (
	"context"
	"encoding/json"
)

// toDeviceKey is the transaction key of to-device messages: MSC4203's
// unstable prefix (the key was part of MSC2409 before it was split off).
const toDeviceKey = "de.sorunome.msc2409.to_device"

// ToDevice is what the senders read of the local to-device inboxes, for
// services that opted in (Registration.ToDevice).
type ToDevice interface {
	// ToDevicePosition is the to-device stream head.
	ToDevicePosition(ctx context.Context) (int64, error)
	// ToDeviceAfter returns the first limit stored messages of every
	// local device with positions above after, in position order;
	// positions commit in order.
	ToDeviceAfter(ctx context.Context, after int64, limit int) ([]ToDeviceMessage, error)
}

// ToDeviceMessage is one stored to-device message and its recipient.
type ToDeviceMessage struct {
	Position         int64
	UserID, DeviceID string
	Sender, Type     string
	Content          json.RawMessage
}

// toDevice reads the next batch of the to-device stream from after and
// returns the messages for devices of the service's users in MSC4203's
// format (the /sync format plus to_user_id and to_device_id) and where
// the stream ends. Nothing is removed from the inboxes (see step).
func (snd *sender) toDevice(ctx context.Context, after int64) (out []map[string]any, next int64, err error) {
	msgs, err := snd.s.deps.ToDevice.ToDeviceAfter(ctx, after, ephemeralBatch)
	if err != nil {
		return nil, after, err
	}
	next = after
	for _, m := range msgs {
		next = max(next, m.Position)
		if !snd.reg.OwnsUser(m.UserID, snd.s.deps.ServerName) {
			continue
		}
		out = append(out, map[string]any{"type": m.Type, "sender": m.Sender, "content": m.Content,
			"to_user_id": m.UserID, "to_device_id": m.DeviceID})
	}
	return out, next, nil
}
