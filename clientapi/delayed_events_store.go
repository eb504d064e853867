package clientapi

import (
	"context"
	"database/sql"
	"encoding/json"
	"time"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
)

const (
	// delayedPollInterval bounds how long the scheduler sleeps: another
	// process may have scheduled or restarted an event it was not told of.
	delayedPollInterval = 5 * time.Second
	// delayedRetryAfter is how long an event whose send failed for a
	// reason other than the room refusing it waits before another try.
	delayedRetryAfter = 5 * time.Second
	// delayedTxnLifetime is how long a delayed send's transaction ID is
	// remembered.
	delayedTxnLifetime = 24 * time.Hour
	// delayedSendDevice is the device of the transaction ID under which
	// a delayed event is sent (with the delay ID as the txnId), so two
	// processes sending the same due event make one event.
	delayedSendDevice = "org.matrix.msc4140"
)

// delayedTxn returns the delay ID a transaction already scheduled, or "".
func (s *Server) delayedTxn(ctx context.Context, userID, deviceID, txnID string) (string, error) {
	var id string
	err := s.db.Reader().QueryRow(ctx, `
		SELECT delay_id FROM delayed_event_txns WHERE user_id = $1 AND device_id = $2 AND txn_id = $3`,
		userID, deviceID, txnID).Scan(&id)
	if storage.IsNoRows(err) {
		return "", nil
	}
	return id, err
}

// insertDelayedEvent stores d, due at now + d.Delay, and returns its new
// delay ID. A user may have at most client_api.delayed_events.max_per_user
// scheduled events.
func (s *Server) insertDelayedEvent(ctx context.Context, d delayedEvent, deviceID, txnID string, now time.Time) (string, error) {
	id := newToken(delayIDPrefix)
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		if txnID != "" {
			// A concurrent retry of the same transaction: the first wins.
			var existing string
			err := tx.QueryRow(ctx, `SELECT delay_id FROM delayed_event_txns WHERE user_id = $1 AND device_id = $2 AND txn_id = $3`,
				d.UserID, deviceID, txnID).Scan(&existing)
			if err == nil {
				id = existing
				return nil
			}
			if !storage.IsNoRows(err) {
				return err
			}
		}
		var n int
		if err := tx.QueryRow(ctx, `SELECT COUNT(*) FROM delayed_events WHERE user_id = $1`, d.UserID).Scan(&n); err != nil {
			return err
		}
		if max := s.cfg.ClientAPI.DelayedEvents.MaxPerUser; n >= max {
			return mxerr.New(mxerr.InvalidParam, "you have %d delayed events waiting, the most this server allows", n).
				With("org.matrix.msc4140.errcode", "M_MAX_DELAYED_EVENTS_EXCEEDED")
		}
		var stateKey sql.NullString
		if d.StateKey != nil {
			stateKey = sql.NullString{String: *d.StateKey, Valid: true}
		}
		if _, err := tx.Exec(ctx, `
			INSERT INTO delayed_events (delay_id, user_id, room_id, event_type, state_key, content, delay_ms, running_since, send_ts)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
			id, d.UserID, d.RoomID, d.Type, stateKey, string(d.Content), d.Delay.Milliseconds(),
			now.UnixMilli(), now.Add(d.Delay).UnixMilli()); err != nil {
			return err
		}
		if txnID == "" {
			return nil
		}
		_, err := tx.Exec(ctx, `
			INSERT INTO delayed_event_txns (user_id, device_id, txn_id, delay_id, created_ts) VALUES ($1, $2, $3, $4, $5)`,
			d.UserID, deviceID, txnID, id, now.UnixMilli())
		return err
	})
	return id, err
}

const delayedColumns = `delay_id, user_id, room_id, event_type, state_key, content, delay_ms, running_since`

func scanDelayedEvent(row interface{ Scan(...any) error }) (delayedEvent, error) {
	var d delayedEvent
	var stateKey sql.NullString
	var content string
	var delayMS, since int64
	if err := row.Scan(&d.DelayID, &d.UserID, &d.RoomID, &d.Type, &stateKey, &content, &delayMS, &since); err != nil {
		return d, err
	}
	if stateKey.Valid {
		d.StateKey = &stateKey.String
	}
	d.Content = json.RawMessage(content)
	d.Delay = time.Duration(delayMS) * time.Millisecond
	d.RunningSince = time.UnixMilli(since)
	return d, nil
}

// delayedEventsOf lists userID's scheduled events, soonest due first.
func (s *Server) delayedEventsOf(ctx context.Context, userID string) ([]delayedEvent, error) {
	rows, err := s.db.Reader().Query(ctx, `SELECT `+delayedColumns+` FROM delayed_events WHERE user_id = $1 ORDER BY send_ts, delay_id`, userID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []delayedEvent
	for rows.Next() {
		d, err := scanDelayedEvent(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

func errNoDelayedEvent(id string) error {
	return mxerr.New(mxerr.NotFound, "no delayed event %q is scheduled", id)
}

// cancelDelayedEvent deletes a scheduled event.
func (s *Server) cancelDelayedEvent(ctx context.Context, delayID string) error {
	return s.db.Write(ctx, func(tx storage.Tx) error {
		res, err := tx.Exec(ctx, `DELETE FROM delayed_events WHERE delay_id = $1`, delayID)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return errNoDelayedEvent(delayID)
		}
		return nil
	})
}

// restartDelayedEvent starts a scheduled event's delay again from now.
func (s *Server) restartDelayedEvent(ctx context.Context, delayID string, now time.Time) error {
	return s.db.Write(ctx, func(tx storage.Tx) error {
		res, err := tx.Exec(ctx, `
			UPDATE delayed_events SET running_since = $2, send_ts = $2 + delay_ms WHERE delay_id = $1`,
			delayID, now.UnixMilli())
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return errNoDelayedEvent(delayID)
		}
		return nil
	})
}

// sendDelayedEventNow sends a scheduled event at once (the send action).
// An event the room refuses is dropped and its error returned.
func (s *Server) sendDelayedEventNow(ctx context.Context, delayID string) error {
	d, err := scanDelayedEvent(s.db.Reader().QueryRow(ctx, `SELECT `+delayedColumns+` FROM delayed_events WHERE delay_id = $1`, delayID))
	if storage.IsNoRows(err) {
		return errNoDelayedEvent(delayID)
	}
	if err != nil {
		return err
	}
	return s.sendDelayedEvent(ctx, d)
}

// sendDelayedEvent sends d as its user and deletes it. MSC4140: power
// levels are checked when the event is sent, not when it is scheduled,
// so a refusal from the room drops the event. Any other failure keeps it
// for another try after delayedRetryAfter.
func (s *Server) sendDelayedEvent(ctx context.Context, d delayedEvent) error {
	_, err := s.rooms.rooms.SendEvent(ctx, roomserver.SendEventRequest{
		RoomID: d.RoomID, Sender: d.UserID, Type: d.Type, StateKey: d.StateKey, Content: d.Content,
		TxnID: &roomserver.TxnID{DeviceID: delayedSendDevice, TxnID: d.DelayID},
	})
	if _, refused := mxerr.As(err); err != nil && !refused {
		if werr := s.db.Write(ctx, func(tx storage.Tx) error {
			_, err := tx.Exec(ctx, `UPDATE delayed_events SET send_ts = $2 WHERE delay_id = $1`,
				d.DelayID, time.Now().Add(delayedRetryAfter).UnixMilli())
			return err
		}); werr != nil {
			s.log.Warn("delayed event: postponing after a failed send", "delay_id", d.DelayID, "err", werr)
		}
		return err
	}
	if derr := s.db.Write(ctx, func(tx storage.Tx) error {
		_, err := tx.Exec(ctx, `DELETE FROM delayed_events WHERE delay_id = $1`, d.DelayID)
		return err
	}); derr != nil {
		return derr
	}
	return err
}

// sendDueDelayedEvents sends every event due at now and returns when the
// next one is due (zero if none is scheduled).
func (s *Server) sendDueDelayedEvents(ctx context.Context, now time.Time) (time.Time, error) {
	rows, err := s.db.Reader().Query(ctx, `SELECT `+delayedColumns+` FROM delayed_events WHERE send_ts <= $1 ORDER BY send_ts, delay_id LIMIT 100`, now.UnixMilli())
	if err != nil {
		return time.Time{}, err
	}
	var due []delayedEvent
	for rows.Next() {
		d, err := scanDelayedEvent(rows)
		if err != nil {
			rows.Close()
			return time.Time{}, err
		}
		due = append(due, d)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return time.Time{}, err
	}
	for _, d := range due {
		if err := s.sendDelayedEvent(ctx, d); err != nil && ctx.Err() == nil {
			s.log.Info("delayed event not sent", "delay_id", d.DelayID, "room_id", d.RoomID, "err", err)
		}
	}
	var next sql.NullInt64
	if err := s.db.Reader().QueryRow(ctx, `SELECT MIN(send_ts) FROM delayed_events`).Scan(&next); err != nil {
		return time.Time{}, err
	}
	if !next.Valid {
		return time.Time{}, nil
	}
	return time.UnixMilli(next.Int64), nil
}

// runDelayedEvents is the scheduler: it sends due events, then sleeps
// until the next is due, it is woken, or delayedPollInterval passes.
// Events that came due while the server was down are sent at start.
func (s *Server) runDelayedEvents(ctx context.Context) {
	var swept time.Time
	for {
		now := time.Now()
		next, err := s.sendDueDelayedEvents(ctx, now)
		if err != nil && ctx.Err() == nil {
			s.log.Warn("delayed events: scheduler", "err", err)
		}
		if now.Sub(swept) > time.Hour {
			swept = now
			if err := s.db.Write(ctx, func(tx storage.Tx) error {
				_, err := tx.Exec(ctx, `DELETE FROM delayed_event_txns WHERE created_ts < $1`, now.Add(-delayedTxnLifetime).UnixMilli())
				return err
			}); err != nil && ctx.Err() == nil {
				s.log.Warn("delayed events: sweeping transaction IDs", "err", err)
			}
		}
		wait := delayedPollInterval
		if !next.IsZero() {
			wait = min(wait, max(time.Until(next), 0))
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-s.delayed.wake:
			timer.Stop()
		case <-timer.C:
		}
	}
}
