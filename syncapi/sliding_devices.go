package syncapi

import (
	"context"
	"errors"
)

// Sliding sync connections of a device that goes away (logout, DELETE
// /devices/{deviceId}, POST /delete_devices, /logout/all, a password
// change or a deactivation that logs devices out) are dropped once its
// deletion commits, rather than kept until they expire: a client may
// create a device again with the same ID (client-server-api, "Login":
// device_id "If this does not correspond to a known client device, a new
// device will be created"), and that new device must start its own
// connections, not continue the old one's from a pos it kept. The drop
// runs in the process that deletes the device (internal/homeserver wires
// it to clientapi's device hooks): in one process the connections are in
// its memory; in split mode they are in Redis, which that process reaches
// whichever components it runs (RedisSlidingConns). A device is also
// dropped when a device of its ID is created, which covers a deletion
// that another process (the `myelin user` commands) made in the memory
// of a server it cannot reach, and a drop lost to a crash or to Redis
// not answering at the time.

// DropDeviceConns drops every sliding sync connection of userID's devices
// deviceIDs, in this process's memory and, in split mode, in Redis.
func (s *Server) DropDeviceConns(ctx context.Context, userID string, deviceIDs ...string) error {
	s.sliding.dropDevices(userID, deviceIDs...)
	if s.slidingRedis != nil {
		return s.slidingRedis.dropDevices(ctx, userID, deviceIDs...)
	}
	return nil
}

// RedisSlidingConns drops sliding sync connections kept in Redis from a
// process that does not run the syncapi component (split mode), or from
// the admin commands.
type RedisSlidingConns struct{ c *redisConns }

// NewRedisSlidingConns reaches the connections of the deployment
// (global.redis_url and redis_prefix, as syncapi.Deps has them). Close
// releases its connections.
func NewRedisSlidingConns(url, prefix string) (*RedisSlidingConns, error) {
	if url == "" {
		return nil, errors.New("syncapi: no Redis URL")
	}
	c, err := newRedisConns(url, prefix)
	if err != nil {
		return nil, err
	}
	return &RedisSlidingConns{c: c}, nil
}

// DropDeviceConns drops every sliding sync connection of userID's devices
// deviceIDs.
func (r *RedisSlidingConns) DropDeviceConns(ctx context.Context, userID string, deviceIDs ...string) error {
	return r.c.dropDevices(ctx, userID, deviceIDs...)
}

// Close closes the Redis client.
func (r *RedisSlidingConns) Close() error { return r.c.client.Close() }
