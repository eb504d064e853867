package appservice

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
)

// batchSize is how many stream events one step reads; a transaction holds
// at most this many events.
const batchSize = 100

// pollInterval bounds how long a sender sleeps without a notification.
const pollInterval = 5 * time.Second

// sender pushes one service's transactions. Only its goroutine touches
// its rows.
type sender struct {
	s   *Server
	reg *Registration
	// typingPos is the typing stream position already turned into
	// transactions. Typing lives in the memory of the process (clientapi's
	// typingTracker), so its position does too: after a restart the
	// typing stream starts afresh, empty, and so does this position. A
	// typing notification in flight at a crash is lost, which the spec
	// allows; a transaction already built is never altered: its body is
	// stored. Only the sender's goroutine touches it after init.
	typingPos int64
}

// receivesEphemeral reports whether the service receives ephemeral data.
func (snd *sender) receivesEphemeral() bool {
	return snd.reg.ReceiveEphemeral && snd.s.deps.Ephemeral != nil
}

// receivesToDevice reports whether the service opted in to to-device
// messages for its users (Registration.ToDevice).
func (snd *sender) receivesToDevice() bool {
	return snd.receivesEphemeral() && snd.reg.ToDevice && snd.s.deps.ToDevice != nil && snd.s.deps.Keys != nil
}

// init gives a service seen for the first time a position at the current
// end of the stream: a new bridge is not flooded with history. So do the
// ephemeral streams of a service that starts receiving them; a service
// that stops loses its ephemeral positions.
func (snd *sender) init(ctx context.Context) error {
	pos, err := snd.s.deps.Rooms.StreamPosition(ctx)
	if err != nil {
		return err
	}
	var receipts, presence, toDevice *int64
	var deviceLists, keyCounts int64
	if snd.receivesEphemeral() {
		r, p, err := snd.s.deps.Ephemeral.Heads(ctx)
		if err != nil {
			return err
		}
		receipts, presence = &r, &p
		if snd.receivesToDevice() {
			d, err := snd.s.deps.ToDevice.ToDevicePosition(ctx)
			if err != nil {
				return err
			}
			toDevice = &d
			if deviceLists, err = snd.s.deps.Keys.DeviceListPosition(ctx); err != nil {
				return err
			}
			if keyCounts, err = snd.s.deps.Keys.KeyCountPosition(ctx); err != nil {
				return err
			}
		}
		_, snd.typingPos = snd.s.deps.Ephemeral.TypingChangedAfter(math.MaxInt64, 1)
	}
	return snd.s.deps.DB.Write(ctx, func(tx storage.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO appservice_positions (as_id, position, next_txn_id)
			VALUES ($1, $2, 1) ON CONFLICT (as_id) DO NOTHING`, snd.reg.ID, pos); err != nil {
			return err
		}
		if receipts == nil {
			_, err := tx.Exec(ctx, `UPDATE appservice_positions SET receipt_pos = NULL, presence_pos = NULL,
				to_device_pos = NULL, device_list_pos = NULL, key_count_pos = NULL WHERE as_id = $1`, snd.reg.ID)
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE appservice_positions SET receipt_pos = COALESCE(receipt_pos, $2),
			presence_pos = COALESCE(presence_pos, $3) WHERE as_id = $1`,
			snd.reg.ID, *receipts, *presence); err != nil {
			return err
		}
		if toDevice == nil {
			_, err := tx.Exec(ctx, `UPDATE appservice_positions SET to_device_pos = NULL, device_list_pos = NULL,
				key_count_pos = NULL WHERE as_id = $1`, snd.reg.ID)
			return err
		}
		_, err := tx.Exec(ctx, `UPDATE appservice_positions SET to_device_pos = COALESCE(to_device_pos, $2),
			device_list_pos = COALESCE(device_list_pos, $3), key_count_pos = COALESCE(key_count_pos, $4) WHERE as_id = $1`,
			snd.reg.ID, *toDevice, deviceLists, keyCounts)
		return err
	})
}

func (snd *sender) run(ctx context.Context) {
	backoff := snd.s.deps.MinBackoff
	for {
		changed := snd.s.deps.Notifier.Changed()
		var keyCountsChanged <-chan struct{}
		if snd.s.deps.KeyCountWakes != nil {
			keyCountsChanged = snd.s.deps.KeyCountWakes.Changed()
		}
		progressed, err := snd.step(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			snd.s.log.Warn("application service transaction failed; retrying", "appservice", snd.reg.ID, "err", err, "retry_in", backoff)
			if !sleep(ctx, backoff) {
				return
			}
			backoff = min(backoff*2, snd.s.deps.MaxBackoff)
			continue
		}
		backoff = snd.s.deps.MinBackoff
		if progressed {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-keyCountsChanged:
		case <-time.After(pollInterval):
		}
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// step sends the oldest pending transaction or, with none pending, turns
// the next stream events into one. It reports whether anything moved.
func (snd *sender) step(ctx context.Context) (bool, error) {
	db := snd.s.deps.DB
	var txnID int64
	var body string
	err := db.Reader().QueryRow(ctx, `SELECT txn_id, body FROM appservice_txns WHERE as_id = $1
		ORDER BY txn_id LIMIT 1`, snd.reg.ID).Scan(&txnID, &body)
	switch {
	case err == nil:
		if err := snd.push(ctx, txnID, []byte(body)); err != nil {
			return false, err
		}
		return true, db.Write(ctx, func(tx storage.Tx) error {
			_, err := tx.Exec(ctx, `DELETE FROM appservice_txns WHERE as_id = $1 AND txn_id = $2`, snd.reg.ID, txnID)
			return err
		})
	case !storage.IsNoRows(err):
		return false, err
	}
	var pos int64
	var receiptPos, presencePos, toDevicePos, deviceListPos, keyCountPos *int64
	if err := db.Reader().QueryRow(ctx, `SELECT position, receipt_pos, presence_pos, to_device_pos, device_list_pos, key_count_pos
		FROM appservice_positions WHERE as_id = $1`,
		snd.reg.ID).Scan(&pos, &receiptPos, &presencePos, &toDevicePos, &deviceListPos, &keyCountPos); err != nil {
		return false, err
	}
	streamPos, err := snd.s.deps.Rooms.StreamPosition(ctx)
	if err != nil {
		return false, err
	}
	events, err := snd.s.deps.Rooms.EventsAfter(ctx, pos, batchSize)
	if err != nil {
		return false, err
	}
	end := pos
	if len(events) > 0 {
		end = events[len(events)-1].StreamPos
	}
	if len(events) < batchSize {
		// Everything up to streamPos was read (rejected events are
		// not returned, so the last event may be before it).
		end = max(end, streamPos)
	}
	out := []map[string]any{}
	ic := newInterestCache()
	for _, ev := range events {
		ok, err := snd.interested(ctx, ev, ic)
		if err != nil {
			return false, err
		}
		if ok {
			out = append(out, clientEvent(ev))
		}
	}
	moved := end > pos
	var eph, toDevice []map[string]any
	var cur, next ephemeralCursor
	var toDeviceNext int64
	withEphemeral := snd.receivesEphemeral() && receiptPos != nil && presencePos != nil
	withToDevice := withEphemeral && snd.receivesToDevice() && toDevicePos != nil && deviceListPos != nil && keyCountPos != nil
	var keys msc3202Data
	var keysCur, keysNext msc3202Cursor
	if withEphemeral {
		cur = ephemeralCursor{receipts: *receiptPos, presence: *presencePos, typing: snd.typingPos}
		if eph, next, err = snd.ephemeral(ctx, cur, ic); err != nil {
			return false, err
		}
		moved = moved || next != cur
	}
	if withToDevice {
		if toDevice, toDeviceNext, err = snd.toDevice(ctx, *toDevicePos); err != nil {
			return false, err
		}
		moved = moved || toDeviceNext != *toDevicePos
		keysCur = msc3202Cursor{deviceLists: *deviceListPos, keyCounts: *keyCountPos}
		if keys, keysNext, err = snd.msc3202(ctx, keysCur, memberChanges(events), ic); err != nil {
			return false, err
		}
		moved = moved || keysNext != keysCur
	}
	if !moved {
		return false, nil
	}
	used := 0 // transaction IDs this step hands out
	if len(out) > 0 || len(eph) > 0 || len(toDevice) > 0 || !keys.empty() {
		used = 1
	}
	if used == 0 && end == pos && withEphemeral && next.receipts == cur.receipts && next.presence == cur.presence &&
		(!withToDevice || toDeviceNext == *toDevicePos && keysNext == keysCur) {
		// Only typing of no interest went by: its position is in
		// memory, so nothing is written.
		snd.typingPos = next.typing
		return true, nil
	}
	err = db.Write(ctx, func(tx storage.Tx) error {
		if used > 0 {
			// Spec: application-service-api, "PUT
			// /_matrix/app/v1/transactions/{txnId}": events is required,
			// ephemeral may be left out when empty.
			txn := map[string]any{"events": out}
			if len(eph) > 0 {
				key := "ephemeral"
				if snd.reg.LegacyEphemeralKey {
					key = "de.sorunome.msc2409.ephemeral"
				}
				txn[key] = eph
			}
			if len(toDevice) > 0 {
				txn[toDeviceKey] = toDevice
			}
			keys.addTo(txn)
			body, err := json.Marshal(txn)
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `INSERT INTO appservice_txns (as_id, txn_id, body)
				SELECT as_id, next_txn_id, $2 FROM appservice_positions WHERE as_id = $1`, snd.reg.ID, string(body)); err != nil {
				return err
			}
		}
		if withToDevice {
			// The messages stay in the inboxes: the service's users'
			// devices may /sync too, and an Olm or room-key message
			// taken from a device that syncs would be lost to it. The
			// position stored with the transaction is what keeps each
			// message to one transaction.
			if _, err := tx.Exec(ctx, `UPDATE appservice_positions SET to_device_pos = $2, device_list_pos = $3,
				key_count_pos = $4 WHERE as_id = $1`,
				snd.reg.ID, toDeviceNext, keysNext.deviceLists, keysNext.keyCounts); err != nil {
				return err
			}
		}
		if withEphemeral {
			_, err := tx.Exec(ctx, `UPDATE appservice_positions SET position = $2, next_txn_id = next_txn_id + $3,
				receipt_pos = $4, presence_pos = $5 WHERE as_id = $1`,
				snd.reg.ID, end, used, next.receipts, next.presence)
			return err
		}
		_, err := tx.Exec(ctx, `UPDATE appservice_positions SET position = $2,
			next_txn_id = next_txn_id + $3 WHERE as_id = $1`, snd.reg.ID, end, used)
		return err
	})
	if err == nil && withEphemeral {
		snd.typingPos = next.typing
	}
	return true, err
}

// interestCache holds, for one step, what was learnt of rooms.
type interestCache struct {
	members  map[string][]string // room -> joined users
	rooms    map[string]bool     // room -> the service is interested
	withUser map[string]bool     // room -> one of the service's users is joined
	sharing  map[string]bool     // user -> shares a room with one of the service's users
}

func newInterestCache() *interestCache {
	return &interestCache{members: map[string][]string{}, rooms: map[string]bool{},
		withUser: map[string]bool{}, sharing: map[string]bool{}}
}

// interested says whether the service should see ev: its sender or (for
// a membership) its target is in the service's user namespaces, or the
// service is interested in the room (roomInterested).
//
// Spec: application-service-api, "Pushing events".
func (snd *sender) interested(ctx context.Context, ev *roomserver.Event, ic *interestCache) (bool, error) {
	reg, server := snd.reg, snd.s.deps.ServerName
	if reg.OwnsUser(ev.Sender, server) {
		return true, nil
	}
	if ev.Type == "m.room.member" && ev.StateKey != nil && reg.OwnsUser(*ev.StateKey, server) {
		return true, nil
	}
	return snd.roomInterested(ctx, ev.RoomID, ic)
}

// roomInterested says whether the service is interested in a room: it is
// in the service's room namespaces or has an alias in its alias
// namespaces, or a user of its namespaces is joined to it.
func (snd *sender) roomInterested(ctx context.Context, roomID string, ic *interestCache) (bool, error) {
	if ok, known := ic.rooms[roomID]; known {
		return ok, nil
	}
	ok, err := snd.roomInterestedUncached(ctx, roomID, ic)
	if err != nil {
		return false, err
	}
	ic.rooms[roomID] = ok
	return ok, nil
}

func (snd *sender) roomInterestedUncached(ctx context.Context, roomID string, ic *interestCache) (bool, error) {
	reg, server := snd.reg, snd.s.deps.ServerName
	if reg.OwnsRoom(roomID) {
		return true, nil
	}
	if len(reg.Namespaces.Aliases) > 0 && snd.s.deps.RoomAliases != nil {
		aliases, err := snd.s.deps.RoomAliases(ctx, roomID)
		if err != nil {
			return false, err
		}
		for _, a := range aliases {
			if reg.OwnsAlias(a) {
				return true, nil
			}
		}
	}
	joined, err := snd.joinedUsers(ctx, roomID, ic)
	if err != nil {
		return false, err
	}
	for _, u := range joined {
		if reg.OwnsUser(u, server) {
			return true, nil
		}
	}
	return false, nil
}

// clientEvent is ev in the client-server event format the transaction
// body carries. Spec: client-server-api, "Room Event Format".
func clientEvent(ev *roomserver.Event) map[string]any {
	out := map[string]any{
		"event_id":         ev.EventID,
		"room_id":          ev.RoomID,
		"type":             ev.Type,
		"sender":           ev.Sender,
		"origin_server_ts": ev.OriginServerTS,
		"content":          ev.Content,
		"unsigned":         map[string]any{},
	}
	if ev.StateKey != nil {
		out["state_key"] = *ev.StateKey
	}
	if ev.Redacts != "" {
		out["redacts"] = ev.Redacts
	}
	return out
}

// push sends one transaction. Only a 200 counts as delivered.
// Spec: application-service-api, "PUT /_matrix/app/v1/transactions/{txnId}".
func (snd *sender) push(ctx context.Context, txnID int64, body []byte) error {
	// Falls back to the legacy route /transactions/{txnId} (legacy.go).
	path := "/transactions/" + url.PathEscape(strconv.FormatInt(txnID, 10))
	resp, err := snd.s.doVersioned(ctx, snd.reg, familyTransactions, http.MethodPut, "/_matrix/app/v1"+path, path, nil, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("transaction %d: status %d", txnID, resp.StatusCode)
	}
	return nil
}

// do makes a homeserver -> service request with the hs_token.
// Spec: application-service-api, "Authorization".
func (s *Server) do(ctx context.Context, reg *Registration, method, u string, body []byte) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+reg.HSToken)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return s.client.Do(req)
}
