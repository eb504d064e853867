package homeserver

import (
	"context"
	"log/slog"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/syncapi"
)

// slidingDrops drops the sliding sync connections of a device once its
// deletion commits, and of a device ID once a device of that ID is created
// (syncapi/sliding_devices.go). It runs in the process that writes the
// device change: that process's syncapi, when it runs one, holds the
// connections (in memory, or in Redis in split mode); a process of a
// split deployment without the syncapi component reaches them in Redis.
type slidingDrops struct {
	// sync is the process's syncapi, set once built (hooks run only
	// after New returns); nil in a process without it.
	sync **syncapi.Server
	// redis reaches the connections in a split-mode process without the
	// syncapi component; nil otherwise.
	redis *syncapi.RedisSlidingConns
	log   *slog.Logger
}

// drop registers the drop of userID's devices deviceIDs' connections
// after tx commits. A failure (Redis not answering) is logged: the
// connections then expire with their TTL, and are dropped again when a
// device of that ID is created.
func (d *slidingDrops) drop(ctx context.Context, tx storage.Tx, userID string, deviceIDs []string) {
	tx.AfterCommit(func() {
		var err error
		switch {
		case d.sync != nil && *d.sync != nil:
			err = (*d.sync).DropDeviceConns(ctx, userID, deviceIDs...)
		case d.redis != nil:
			err = d.redis.DropDeviceConns(ctx, userID, deviceIDs...)
		}
		if err != nil {
			d.log.Warn("could not drop the sliding sync connections of deleted devices; they expire within the hour",
				"user_id", userID, "devices", deviceIDs, "err", err)
		}
	})
}

// devicesDeleted is the clientapi.DevicesDeletedHook part.
func (d *slidingDrops) devicesDeleted(ctx context.Context, tx storage.Tx, userID string, deviceIDs []string) error {
	d.drop(ctx, tx, userID, deviceIDs)
	return nil
}

// deviceCreated is the clientapi.DeviceCreatedHook part.
func (d *slidingDrops) deviceCreated(ctx context.Context, tx storage.Tx, userID, deviceID string) error {
	d.drop(ctx, tx, userID, []string{deviceID})
	return nil
}
