package keyserver

import (
	"context"
	"encoding/json"
	"time"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// The key server's federation endpoints (served by federationapi, which
// authenticated the requesting server) and the sender of local users'
// device-list updates. Spec: server-server-api, "Device Management" and
// "End-to-End Encryption".

// FederationQueryKeys answers POST /_matrix/federation/v1/user/keys/query
// for local users: device keys, master and self-signing keys, with the
// owner's signatures. Users of other servers are left out.
func (s *Server) FederationQueryKeys(ctx context.Context, deviceKeys map[string][]string) (any, error) {
	out := newKeysResult()
	for userID, wanted := range deviceKeys {
		if !s.isLocal(userID) {
			continue
		}
		if err := s.localKeys(ctx, "", userID, wanted, out); err != nil {
			return nil, err
		}
	}
	return map[string]any{"device_keys": out.DeviceKeys, "master_keys": out.MasterKeys, "self_signing_keys": out.SelfSigningKeys}, nil
}

// FederationClaimKeys answers POST /_matrix/federation/v1/user/keys/claim
// for local users' devices.
func (s *Server) FederationClaimKeys(ctx context.Context, oneTimeKeys map[string]map[string]string) (any, error) {
	result, err := s.claimLocal(ctx, oneTimeKeys)
	if err != nil {
		return nil, err
	}
	return map[string]any{"one_time_keys": result}, nil
}

// FederationUserDevices answers GET /_matrix/federation/v1/user/devices/
// {userId} for a local user: every device (with keys and display name
// when it has them), the master and self-signing keys, and stream_id, the
// user's latest device-list stream position, which the next
// m.device_list_update about them names in prev_id.
func (s *Server) FederationUserDevices(ctx context.Context, userID string) (any, error) {
	if !s.isLocal(userID) {
		return nil, mxerr.New(mxerr.InvalidParam, "%s is not a user of this server", userID)
	}
	// The stream position first, then what it covers (the device names
	// come from another component, outside any transaction of ours): a
	// change committed between the reads makes the answer newer than its
	// stream_id, never older, so the m.device_list_update announcing that
	// change (a later stream_id) is applied by the other server. Read the
	// other way round, a rename committed after the names were read and
	// before the position was gave an answer that claimed the rename's
	// stream_id without it, and the other server then took the rename's
	// update as seen already and kept the old name (Complement
	// TestFederationKeyUploadQuery, once).
	var streamID int64
	err := s.db.Read(ctx, func(q storage.Querier) error {
		var err error
		streamID, err = latestPosition(ctx, q, userID, 0)
		return err
	})
	if err != nil {
		return nil, err
	}
	names, err := s.userDevices(ctx, userID)
	if err != nil {
		return nil, err
	}
	keys := newKeysResult()
	if err := s.localKeys(ctx, "", userID, nil, keys); err != nil {
		return nil, err
	}
	devices := []map[string]any{}
	for deviceID, name := range names {
		d := map[string]any{"device_id": deviceID}
		if k, ok := keys.DeviceKeys[userID][deviceID]; ok {
			d["keys"] = k
		}
		if name != "" {
			d["device_display_name"] = name
		}
		devices = append(devices, d)
	}
	resp := map[string]any{"user_id": userID, "stream_id": streamID, "devices": devices}
	if k, ok := keys.MasterKeys[userID]; ok {
		resp["master_key"] = k
	}
	if k, ok := keys.SelfSigningKeys[userID]; ok {
		resp["self_signing_key"] = k
	}
	return resp, nil
}

// Notified is told that a key-server stream advanced (Deps.Notify of
// components that write its tables, such as DevicesDeletedHook's caller);
// a device-list change wakes the sender of device-list updates.
func (s *Server) Notified(stream string, _ int64) {
	if stream != DeviceListStream {
		return
	}
	select {
	case s.deviceListWake <- struct{}{}:
	default:
	}
}

// StartFederation starts the device-list update sender and lets remote
// resyncs run, both until ctx ends. Call it once, before serving.
func (s *Server) StartFederation(ctx context.Context) {
	s.resyncMu.Lock()
	s.bg = ctx
	s.resyncMu.Unlock()
	if s.noBackground {
		return
	}
	go s.RunDeviceListSender(ctx)
}

// RunDeviceListSender runs the device-list update sender until ctx
// ends. StartFederation runs it unless NoBackground is set; a process of
// a split deployment that holds the key server's lease
// (internal/lease) runs it itself, after StartFederation. Without
// federation it returns at once.
func (s *Server) RunDeviceListSender(ctx context.Context) {
	if s.queueEDU == nil || s.sharedServers == nil {
		return
	}
	tick := time.NewTicker(time.Minute)
	defer tick.Stop()
	for {
		if err := s.SendDeviceListUpdates(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("sending device-list updates", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-s.deviceListWake:
		case <-tick.C:
		}
	}
}

// deviceListHead is the keyserver_stream_heads row of the sender.
const deviceListHead = "federation_device_lists"

// SendDeviceListUpdates hands every local change of the device-list
// stream past the sender's head to the federation sender (which retries
// until acknowledged), then moves the head: an m.device_list_update per
// device change (stream_id its position, prev_id the user's previous
// one, deleted when the device is gone) and an m.signing_key_update per
// cross-signing change, to the servers sharing a room with the user. A
// crash before the head moves sends the batch again; receivers ignore
// stream IDs they have seen.
func (s *Server) SendDeviceListUpdates(ctx context.Context) error {
	s.flush.mu.Lock() // one sender at a time
	defer s.flush.mu.Unlock()
	for {
		type change struct {
			pos              int64
			userID, deviceID string
		}
		var batch []change
		err := s.db.Read(ctx, func(q storage.Querier) error {
			rows, err := q.Query(ctx, `SELECT c.position, c.user_id, c.device_id FROM keyserver_device_list_changes c
				WHERE c.position > (SELECT position FROM keyserver_stream_heads WHERE stream = $1)
				ORDER BY c.position LIMIT $2`, deviceListHead, outboundBatch)
			if err != nil {
				return err
			}
			defer rows.Close()
			for rows.Next() {
				var c change
				if err := rows.Scan(&c.pos, &c.userID, &c.deviceID); err != nil {
					return err
				}
				batch = append(batch, c)
			}
			return rows.Err()
		})
		if err != nil || len(batch) == 0 {
			return err
		}
		for _, c := range batch {
			if !s.isLocal(c.userID) {
				continue
			}
			if err := s.sendDeviceListUpdate(ctx, c.pos, c.userID, c.deviceID); err != nil {
				return err
			}
		}
		last := batch[len(batch)-1].pos
		if err := s.db.Write(ctx, func(tx storage.Tx) error {
			_, err := tx.Exec(ctx, `UPDATE keyserver_stream_heads SET position = $2 WHERE stream = $1 AND position < $2`, deviceListHead, last)
			return err
		}); err != nil {
			return err
		}
	}
}

func (s *Server) sendDeviceListUpdate(ctx context.Context, pos int64, userID, deviceID string) error {
	servers, err := s.sharedServers(ctx, userID)
	if err != nil {
		return err
	}
	var dests []string
	for _, srv := range servers {
		if srv != s.serverName {
			dests = append(dests, srv)
		}
	}
	if len(dests) == 0 {
		return nil
	}
	keys := newKeysResult()
	if err := s.localKeys(ctx, "", userID, nil, keys); err != nil {
		return err
	}
	if deviceID == "" {
		content := map[string]any{"user_id": userID}
		if k, ok := keys.MasterKeys[userID]; ok {
			content["master_key"] = k
		}
		if k, ok := keys.SelfSigningKeys[userID]; ok {
			content["self_signing_key"] = k
		}
		return s.queueEDU(ctx, dests, "m.signing_key_update", content)
	}
	prev, err := latestPosition(ctx, s.db.Reader(), userID, pos)
	if err != nil {
		return err
	}
	prevIDs := []int64{}
	if prev > 0 {
		prevIDs = append(prevIDs, prev)
	}
	content := map[string]any{"user_id": userID, "device_id": deviceID, "stream_id": pos, "prev_id": prevIDs}
	if k, ok := keys.DeviceKeys[userID][deviceID]; ok {
		content["keys"] = k
		var dk struct {
			Unsigned struct {
				Name string `json:"device_display_name"`
			} `json:"unsigned"`
		}
		if json.Unmarshal(k, &dk) == nil && dk.Unsigned.Name != "" {
			content["device_display_name"] = dk.Unsigned.Name
		}
	} else {
		// A device without keys (renamed before it uploaded any) still
		// exists: send its name; only a device gone is "deleted".
		names, err := s.userDevices(ctx, userID)
		if err != nil {
			return err
		}
		if name, exists := names[deviceID]; !exists {
			content["deleted"] = true
		} else if name != "" {
			content["device_display_name"] = name
		}
	}
	return s.queueEDU(ctx, dests, "m.device_list_update", content)
}
