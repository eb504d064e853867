package keyserver

import (
	"context"
	"maps"
	"slices"
	"sync"

	"github.com/myelin-chat/myelin/storage"
)

// CountMemo keeps KeyCounts' answers (a device's unclaimed one-time keys
// per algorithm and its unused fallback key types) in memory. Every
// woken /sync response of a device carries them (device_one_time_keys_count,
// device_unused_fallback_key_types), and they change only when a
// transaction of this process's key server writes the device's keys:
// an upload (POST /keys/upload), a claim (local or over federation,
// claimOne) or the deletion of the device (DevicesDeletedHook). Each of
// those drops the device's entry in OnCommit, right after its commit and
// before it is acknowledged.
//
// Why it is exact: a read takes the memo's generation before it starts
// its statement and keeps its answer only if no drop has happened since
// (put). A write that committed before the statement began is in its
// answer; one that commits after drops, after its commit, so after the
// generation was taken: either before put (the answer is not kept) or
// after it (the kept answer is dropped). Until the drop a reader may
// still see the answer from before a commit whose write is not yet
// acknowledged.
//
// Another process's writes never reach it: a homeserver whose key tables
// another process writes too (split mode, with Redis) must not use one
// (Deps.CountMemo nil; internal/homeserver passes nil then).
//
// Safe for concurrent use.
type CountMemo struct {
	mu sync.Mutex
	// gen counts drops; guarded by mu.
	gen uint64
	// entries holds the kept answers; guarded by mu. At most
	// maxCountMemoDevices, then it starts again empty.
	entries map[DeviceRef]DeviceKeyCounts
}

// maxCountMemoDevices bounds a CountMemo: ~200 bytes a device.
const maxCountMemoDevices = 50_000

// NewCountMemo returns an empty memo, to pass to both New (Deps.CountMemo)
// and DevicesDeletedHook.
func NewCountMemo() *CountMemo {
	return &CountMemo{entries: map[DeviceRef]DeviceKeyCounts{}}
}

// dropOnCommit drops the devices' entries when tx commits. A nil memo
// does nothing.
func (m *CountMemo) dropOnCommit(tx storage.Tx, userID string, deviceIDs ...string) {
	if m == nil {
		return
	}
	deviceIDs = slices.Clone(deviceIDs)
	tx.OnCommit(func() { m.drop(userID, deviceIDs...) })
}

// DeviceCreatedHook returns the function clientapi calls (as
// clientapi.Deps.OnDeviceCreated) inside the transaction that creates a
// device: it drops the device's entry in counts (nil: none) when that
// transaction commits. Another process (the `myelin user` commands) may
// have deleted an earlier device with the same ID, and its keys, without
// reaching this memo; a device created again starts from its own keys.
func DeviceCreatedHook(counts *CountMemo) func(ctx context.Context, tx storage.Tx, userID, deviceID string) error {
	return func(_ context.Context, tx storage.Tx, userID, deviceID string) error {
		counts.dropOnCommit(tx, userID, deviceID)
		return nil
	}
}

func (m *CountMemo) drop(userID string, deviceIDs ...string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.gen++
	for _, d := range deviceIDs {
		delete(m.entries, DeviceRef{UserID: userID, DeviceID: d})
	}
}

// begin returns the generation a read about to start must give put.
func (m *CountMemo) begin() uint64 {
	if m == nil {
		return 0
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.gen
}

// get returns a copy of the device's kept answer.
func (m *CountMemo) get(d DeviceRef) (DeviceKeyCounts, bool) {
	if m == nil {
		return DeviceKeyCounts{}, false
	}
	m.mu.Lock()
	c, ok := m.entries[d]
	m.mu.Unlock()
	if !ok {
		return DeviceKeyCounts{}, false
	}
	return DeviceKeyCounts{OneTimeKeys: maps.Clone(c.OneTimeKeys), UnusedFallback: slices.Clone(c.UnusedFallback)}, true
}

// put keeps answers read by a read that began at generation gen, unless
// a drop has happened since. It keeps its own copies.
func (m *CountMemo) put(gen uint64, devices []DeviceRef, counts []DeviceKeyCounts) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.gen != gen {
		return
	}
	if len(m.entries)+len(devices) > maxCountMemoDevices {
		m.entries = map[DeviceRef]DeviceKeyCounts{}
	}
	for i, d := range devices {
		m.entries[d] = DeviceKeyCounts{OneTimeKeys: maps.Clone(counts[i].OneTimeKeys), UnusedFallback: slices.Clone(counts[i].UnusedFallback)}
	}
}
