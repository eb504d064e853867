package pushserver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/tidwall/gjson"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/storage"
)

// pusherKey names one pusher of a user.
type pusherKey struct{ appID, pushkey string }

// enqueue queues n for each of its user's pushers and reports whether
// anything was queued. The body is the gateway's notification object
// without devices: counts.unread is the user's unread count once n is
// written (same transaction).
//
// known holds the pushers already read in this transaction, by user:
// one write of the consumer queues the notifications of a whole batch
// of events, usually for the same members again and again, and nothing
// in the transaction changes the pushers table, so each user's pushers
// are read once per transaction. The caller makes a new map for each
// transaction (and each attempt of it).
// Spec: push-gateway-api, "POST /_matrix/push/v1/notify".
func (s *Server) enqueue(ctx context.Context, tx storage.Tx, n notification, now int64, known map[string][]pusherKey) (bool, error) {
	pushers, ok := known[n.userID]
	if !ok {
		var err error
		if pushers, err = readPushers(ctx, tx, n.userID); err != nil {
			return false, err
		}
		known[n.userID] = pushers
	}
	if len(pushers) == 0 {
		return false, nil
	}
	unread, err := totalUnread(ctx, tx, n.userID)
	if err != nil {
		return false, err
	}
	tw := tweaks(n.actions)
	prio := "low"
	if _, ok := tw["sound"]; ok || n.highlight {
		prio = "high"
	}
	body := map[string]any{
		"event_id":       n.event.EventID,
		"room_id":        n.event.RoomID,
		"type":           n.event.Type,
		"sender":         n.event.Sender,
		"prio":           prio,
		"counts":         map[string]int{"unread": unread},
		"content":        n.event.Content,
		"user_is_target": n.event.StateKey != nil && *n.event.StateKey == n.userID,
	}
	if name := n.room.names[n.event.Sender]; name != "" {
		body["sender_display_name"] = name
	} else if name := gjson.GetBytes(n.event.Content, "displayname").Str; name != "" && n.event.Type == "m.room.member" &&
		n.event.StateKey != nil && *n.event.StateKey == n.event.Sender {
		body["sender_display_name"] = name
	}
	if n.room.name != "" {
		body["room_name"] = n.room.name
	}
	if n.room.alias != "" {
		body["room_alias"] = n.room.alias
	}
	bodyJSON, err := json.Marshal(body)
	if err != nil {
		return false, err
	}
	tweaksJSON, _ := json.Marshal(tw)
	for _, p := range pushers {
		if _, err := tx.Exec(ctx, `INSERT INTO push_queue (user_id, app_id, pushkey, body, tweaks, attempts, queued_ts, next_attempt_ts)
			VALUES ($1, $2, $3, $4, $5, 0, $6, $6)`, n.userID, p.appID, p.pushkey, string(bodyJSON), string(tweaksJSON), now); err != nil {
			return false, err
		}
	}
	return true, nil
}

// readPushersOf returns the pushers of every user notes notify, as tx
// sees them, keyed by user (an entry for each, nil when they have
// none), in one query: a message to a room of N local members would
// otherwise cost N reads inside its transaction. The users are taken
// from the rows notes were written as, those with an id above after
// (lastNotificationID, taken before they were inserted): one fixed
// statement, where a list of the users as placeholders was a statement
// of a new length, compiled afresh, for every room size
// (docs/benchmarks.md, "sendsum").
func readPushersOf(ctx context.Context, tx storage.Tx, notes []notification, after int64) (map[string][]pusherKey, error) {
	known := map[string][]pusherKey{}
	for _, n := range notes {
		known[n.userID] = nil
	}
	if len(notes) == 0 {
		return known, nil
	}
	rows, err := tx.Query(ctx, `SELECT user_id, app_id, pushkey FROM pushers
		WHERE user_id IN (SELECT user_id FROM push_notifications WHERE id > $1)`, after)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var userID string
		var k pusherKey
		if err := rows.Scan(&userID, &k.appID, &k.pushkey); err != nil {
			return nil, err
		}
		known[userID] = append(known[userID], k)
	}
	return known, rows.Err()
}

// readPushers returns userID's pushers as tx sees them.
func readPushers(ctx context.Context, tx storage.Tx, userID string) ([]pusherKey, error) {
	rows, err := tx.Query(ctx, `SELECT app_id, pushkey FROM pushers WHERE user_id = $1`, userID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	pushers := []pusherKey{} // non-nil: read, maybe none
	for rows.Next() {
		var k pusherKey
		if err := rows.Scan(&k.appID, &k.pushkey); err != nil {
			return nil, err
		}
		pushers = append(pushers, k)
	}
	return pushers, rows.Err()
}

func (s *Server) kickSender() {
	select {
	case s.wakeSender <- struct{}{}:
	default:
	}
}

// Sender limits.
const (
	sendBatch       = 100
	sendParallelism = 8
	maxSenderSleep  = 5 * time.Second
	pruneEvery      = time.Hour
)

// runSender delivers queued notifications until ctx ends.
func (s *Server) runSender(ctx context.Context) {
	lastPrune := time.Time{}
	for {
		if time.Since(lastPrune) > pruneEvery {
			if err := s.prune(ctx); err != nil && ctx.Err() == nil {
				s.log.Error("pruning old notifications failed", "err", err)
			}
			lastPrune = time.Now()
		}
		sleep, err := s.sendDue(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			s.log.Error("push sender failed; retrying", "err", err)
			sleep = time.Second
		}
		if sleep <= 0 {
			continue
		}
		t := time.NewTimer(sleep)
		select {
		case <-s.wakeSender:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
		t.Stop()
	}
}

// prune deletes notifications older than the retention period.
func (s *Server) prune(ctx context.Context) error {
	cutoff := s.now().Add(-s.cfg.NotificationRetention.D()).UnixMilli()
	return s.db.Write(ctx, func(tx storage.Tx) error {
		if err := lockCounts(ctx, s.db, tx); err != nil {
			return err
		}
		return pruneNotifications(ctx, tx, cutoff)
	})
}

// queued is one push_queue row.
type queued struct {
	id                     int64
	userID, appID, pushkey string
	body, tweaks           string
	attempts               int
	queuedTS               int64
}

// sendDue sends every due row that is first in its pusher's queue and
// returns how long to sleep before the next is due (0: look again now).
func (s *Server) sendDue(ctx context.Context) (time.Duration, error) {
	now := s.now().UnixMilli()
	rows, err := s.db.Reader().Query(ctx, `SELECT q.id, q.user_id, q.app_id, q.pushkey, q.body, q.tweaks, q.attempts, q.queued_ts
		FROM push_queue q WHERE q.next_attempt_ts <= $1 AND NOT EXISTS (SELECT 1 FROM push_queue e
			WHERE e.user_id = q.user_id AND e.app_id = q.app_id AND e.pushkey = q.pushkey AND e.id < q.id)
		ORDER BY q.id LIMIT $2`, now, sendBatch)
	if err != nil {
		return 0, err
	}
	var due []queued
	for rows.Next() {
		var q queued
		if err := rows.Scan(&q.id, &q.userID, &q.appID, &q.pushkey, &q.body, &q.tweaks, &q.attempts, &q.queuedTS); err != nil {
			rows.Close()
			return 0, err
		}
		due = append(due, q)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, sendParallelism)
	errs := make([]error, len(due))
	for i, q := range due {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			errs[i] = s.deliver(ctx, q)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return 0, err
	}
	if len(due) == sendBatch {
		return 0, nil
	}
	var next *int64
	if err := s.db.Reader().QueryRow(ctx, `SELECT MIN(next_attempt_ts) FROM push_queue`).Scan(&next); err != nil {
		return 0, err
	}
	if next == nil {
		return maxSenderSleep, nil
	}
	wait := time.Duration(*next-s.now().UnixMilli()) * time.Millisecond
	return min(max(wait, time.Millisecond), maxSenderSleep), nil
}

// pusherRow is a stored pusher, as delivery needs it.
type pusherRow struct {
	pushkeyTS int64
	data      map[string]any
}

// deliver sends one queued notification and records the outcome: done
// (accepted, or rejected pushkey, which also deletes the pusher),
// retried later with backoff, or dropped (the pusher is gone, the
// gateway refused the request for good, or give_up_after passed).
func (s *Server) deliver(ctx context.Context, q queued) error {
	var p pusherRow
	var data string
	err := s.db.Reader().QueryRow(ctx, `SELECT pushkey_ts, data FROM pushers WHERE user_id = $1 AND app_id = $2 AND pushkey = $3`,
		q.userID, q.appID, q.pushkey).Scan(&p.pushkeyTS, &data)
	if storage.IsNoRows(err) {
		return s.dequeue(ctx, q, nil)
	}
	if err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(data), &p.data); err != nil {
		return s.dequeue(ctx, q, nil)
	}
	url, _ := p.data["url"].(string)
	req, err := gatewayRequest(q, p)
	if err != nil {
		return s.dequeue(ctx, q, nil)
	}
	rejected, retry, sendErr := s.post(ctx, url, req)
	switch {
	case sendErr == nil:
		return s.dequeue(ctx, q, rejected)
	case !retry:
		s.log.Warn("push gateway refused a notification; dropped", "app_id", q.appID, "err", sendErr)
		return s.dequeue(ctx, q, nil)
	}
	if s.now().Sub(time.UnixMilli(q.queuedTS)) > s.cfg.GiveUpAfter.D() {
		s.log.Warn("push gateway unreachable too long; notification dropped", "app_id", q.appID, "err", sendErr)
		return s.dequeue(ctx, q, nil)
	}
	backoff := s.backoff(q.attempts + 1)
	return s.db.Write(ctx, func(tx storage.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE push_queue SET attempts = $1, next_attempt_ts = $2 WHERE id = $3`,
			q.attempts+1, s.now().Add(backoff).UnixMilli(), q.id)
		return err
	})
}

// backoff is min_backoff doubled per failed attempt, at most max_backoff.
func (s *Server) backoff(attempts int) time.Duration {
	d := s.cfg.MinBackoff.D()
	for i := 1; i < attempts && d < s.cfg.MaxBackoff.D(); i++ {
		d *= 2
	}
	return min(d, s.cfg.MaxBackoff.D())
}

// dequeue removes a delivered or dropped row and deletes the user's
// pushers whose pushkeys the gateway rejected, with their queues.
// Spec: push-gateway-api: "the homeserver should remove" rejected
// pushkeys.
func (s *Server) dequeue(ctx context.Context, q queued, rejected []string) error {
	return s.db.Write(ctx, func(tx storage.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM push_queue WHERE id = $1`, q.id); err != nil {
			return err
		}
		for _, key := range rejected {
			if _, err := tx.Exec(ctx, `DELETE FROM pushers WHERE user_id = $1 AND app_id = $2 AND pushkey = $3`,
				q.userID, q.appID, key); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `DELETE FROM push_queue WHERE user_id = $1 AND app_id = $2 AND pushkey = $3`,
				q.userID, q.appID, key); err != nil {
				return err
			}
		}
		return nil
	})
}

// gatewayRequest builds the POST body for one device: the queued
// notification (cut down to IDs and counts for format event_id_only)
// and the device's pushkey, app_id, pushkey_ts, tweaks and data without
// url. Spec: push-gateway-api; client-server-api, "POST
// /_matrix/client/v3/pushers/set" (data is forwarded minus url).
func gatewayRequest(q queued, p pusherRow) ([]byte, error) {
	var note map[string]json.RawMessage
	if err := json.Unmarshal([]byte(q.body), &note); err != nil {
		return nil, err
	}
	if p.data["format"] == "event_id_only" {
		slim := map[string]json.RawMessage{}
		for _, k := range []string{"event_id", "room_id", "counts", "prio"} {
			if v, ok := note[k]; ok {
				slim[k] = v
			}
		}
		note = slim
	}
	data := map[string]any{}
	for k, v := range p.data {
		if k != "url" {
			data[k] = v
		}
	}
	device := map[string]any{
		"app_id":     q.appID,
		"pushkey":    q.pushkey,
		"pushkey_ts": p.pushkeyTS / 1000,
		"data":       data,
		"tweaks":     json.RawMessage(q.tweaks),
	}
	devices, err := json.Marshal([]any{device})
	if err != nil {
		return nil, err
	}
	note["devices"] = devices
	return json.Marshal(map[string]any{"notification": note})
}

// post sends body to a gateway. It returns the rejected pushkeys on
// success; on failure whether retrying may help (network errors, 5xx,
// 429).
func (s *Server) post(ctx context.Context, url string, body []byte) (rejected []string, retry bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout.D())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, false, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, !errors.Is(err, errForbiddenAddress), err
	}
	defer resp.Body.Close()
	respBody, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		for _, k := range gjson.GetBytes(respBody, "rejected").Array() {
			rejected = append(rejected, k.Str)
		}
		return rejected, false, nil
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusRequestTimeout:
		return nil, true, fmt.Errorf("push gateway answered %d", resp.StatusCode)
	}
	return nil, false, fmt.Errorf("push gateway answered %d", resp.StatusCode)
}

// errForbiddenAddress is a dial refused by the address policy.
var errForbiddenAddress = errors.New("push gateway address is not public and not in push.outbound_ip_allow")

// cgnat is the shared address space (RFC 6598), which netip does not
// count as private.
var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// gatewayClient returns the HTTP client for push gateways: it connects
// only to public unicast addresses (checked on the resolved address at
// dial time, so DNS cannot point it inside) unless cfg.OutboundIPAllow
// lists them, and follows no redirects.
func gatewayClient(cfg config.Push) (*http.Client, error) {
	var allow []netip.Prefix
	for _, s := range cfg.OutboundIPAllow {
		p, err := config.ParseIPOrPrefix(s)
		if err != nil {
			return nil, err
		}
		allow = append(allow, p)
	}
	dialer := &net.Dialer{
		Timeout: 10 * time.Second,
		Control: func(_, address string, _ syscall.RawConn) error {
			host, _, err := net.SplitHostPort(address)
			if err != nil {
				return err
			}
			addr, err := netip.ParseAddr(host)
			if err != nil {
				return err
			}
			if !publicAddress(addr, allow) {
				return fmt.Errorf("%w: %s", errForbiddenAddress, addr)
			}
			return nil
		},
	}
	transport := &http.Transport{
		DialContext:         dialer.DialContext,
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 10 * time.Second,
	}
	return &http.Client{
		Transport: transport,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}, nil
}

// publicAddress reports whether addr may be dialled: listed in allow, or
// a global unicast address that is not private, CGNAT or (for
// IPv4-mapped IPv6) any of those as IPv4.
func publicAddress(addr netip.Addr, allow []netip.Prefix) bool {
	addr = addr.Unmap()
	for _, p := range allow {
		if p.Contains(addr) {
			return true
		}
	}
	return addr.IsGlobalUnicast() && !addr.IsPrivate() && !cgnat.Contains(addr)
}
