package keyserver

import (
	"context"
	"encoding/json"
)

// Stream names Deps.Notify hears.
const (
	// ToDeviceStream advances when a to-device message is stored for a
	// local device. Positions are keyserver_to_device positions.
	ToDeviceStream = "to_device"
	// DeviceListStream advances when a user's devices, device keys or
	// cross-signing keys change. Positions are device-list positions.
	DeviceListStream = "device_list"
	// KeyCountStream names the key-count change stream
	// (KeyCountChangesAfter). Deps.Notify never hears it (no /sync reads
	// it); Deps.KeyCountsNotify does.
	KeyCountStream = "key_counts"
)

// API is what the sync component reads from the key server. *Server
// implements it.
type API interface {
	// ToDevicePosition is the to-device stream head, for sync tokens: no
	// message stored later has a position at or below it.
	ToDevicePosition(ctx context.Context) (int64, error)
	// ToDeviceSince returns the to-device messages waiting for the device
	// with a position above since, oldest first, at most
	// ToDeviceBatchLimit of them, and latest, the position of the last one
	// returned (since itself when there are none). Messages stay stored
	// until AckToDevice acknowledges them, so a lost /sync response is
	// delivered again.
	ToDeviceSince(ctx context.Context, userID, deviceID string, since int64) (events []ToDeviceEvent, latest int64, err error)
	// AckToDevice deletes the device's messages at positions <= upTo. Sync
	// calls it when the client presents a token whose to-device position
	// is upTo: the client has received everything up to it.
	AckToDevice(ctx context.Context, userID, deviceID string, upTo int64) error

	// DeviceListPosition is the device-list stream head, for sync tokens.
	DeviceListPosition(ctx context.Context) (int64, error)
	// DeviceListChanges answers device_lists for userID's sync between
	// device-list positions from (exclusive) and to (inclusive). See
	// MembershipDelta for what the caller supplies about rooms.
	DeviceListChanges(ctx context.Context, userID string, from, to int64, rooms MembershipDelta) (changed, left []string, err error)

	// OneTimeKeyCounts is device_one_time_keys_count: unclaimed one-time
	// keys per algorithm (algorithms with none are omitted).
	OneTimeKeyCounts(ctx context.Context, userID, deviceID string) (map[string]int, error)
	// UnusedFallbackKeyTypes is device_unused_fallback_key_types: the
	// algorithms whose fallback key has not been claimed. Never nil.
	UnusedFallbackKeyTypes(ctx context.Context, userID, deviceID string) ([]string, error)
	// KeyCounts is OneTimeKeyCounts and UnusedFallbackKeyTypes in one
	// query, as every /sync response carries both.
	KeyCounts(ctx context.Context, userID, deviceID string) (otk map[string]int, unusedFallback []string, err error)
	// KeyCountsOfDevices is KeyCounts for several devices in one read:
	// out[i] answers devices[i].
	KeyCountsOfDevices(ctx context.Context, devices []DeviceRef) ([]DeviceKeyCounts, error)
}

var _ API = (*Server)(nil)

// ToDeviceBatchLimit bounds how many to-device messages one
// ToDeviceSince returns.
const ToDeviceBatchLimit = 100

// ToDeviceEvent is one to-device message as /sync's to_device.events
// carries it. Position is not serialised.
//
// Spec: client-server-api, "Send-to-Device messaging", "Extensions to /sync".
type ToDeviceEvent struct {
	Sender   string          `json:"sender"`
	Type     string          `json:"type"`
	Content  json.RawMessage `json:"content"`
	Position int64           `json:"-"`
}

// MembershipDelta is what the room side of sync knows about userID's
// rooms between the previous sync and this one. The key server does not
// read room membership itself (the roomserver owns it).
//
//   - Joined: users who started sharing a room with userID in the window
//     — they joined one of userID's rooms, or userID joined a room they
//     are in. Spec (end_to_end_encryption, "Tracking the device list for a
//     user"): their device list may be stale on the client, so they are
//     reported in changed even without a device-list change.
//   - Left: users who shared at least one room with userID at the start
//     of the window and share none at its end (either side left). They
//     are reported in left, unless Deps.SharedRoomUsers still lists them.
//
// An initial sync passes the zero value (and does not report device_lists).
type MembershipDelta struct {
	Joined []string
	Left   []string
}
