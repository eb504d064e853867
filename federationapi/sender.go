package federationapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/myelin-chat/myelin/storage"
)

// sender delivers local events and queued EDUs to other servers.
//
// The database is the log: fanOut reads the roomserver event stream from
// federation_sender_state.fanout_pos and, in the transaction that
// advances it, writes a federation_queue_pdus row per (destination,
// event). One worker per destination with queued rows sends them in
// transactions of at most 50 PDUs and 100 EDUs; a transaction is recorded
// in federation_destinations and its queue rows are marked with its txnId
// before it is sent, and exactly those rows are deleted only after a 200,
// so a retry or a restart resends the same rows with the same txnId (the
// receiver deduplicates), rows queued meanwhile wait for the next
// transaction, and an outage is caught up from the queue.
// Failures back off per destination: min_backoff doubling to max_backoff,
// reset on success or when the destination talks to us.
//
// Lock order: sender.mu is never held while calling the database or the
// network.
type sender struct {
	s      *Server
	wakeCh chan struct{}
	// view holds the destinations that may have failures
	// (backoff_view.go); reads counts destinationUp's reads of
	// federation_destinations (for tests).
	view *backoffView
	// shared: other processes of a split deployment queue EDUs (and
	// write the events fanned out) without a sender of their own, so
	// run reads the queues at every tick (Deps.Wakes set); immutable.
	shared bool
	reads  atomic.Int64
	// beforeReload, when set (tests only), runs before each reload of
	// the view.
	beforeReload atomic.Pointer[func(context.Context)]

	mu      sync.Mutex
	ctx     context.Context        // set by run; guarded by mu
	workers map[string]*destWorker // guarded by mu
	wg      sync.WaitGroup
}

type destWorker struct {
	kick chan struct{}
}

func newSender(s *Server, shared bool) *sender {
	return &sender{s: s, wakeCh: make(chan struct{}, 1), workers: map[string]*destWorker{}, view: newBackoffView(shared), shared: shared}
}

func (q *sender) wake() {
	select {
	case q.wakeCh <- struct{}{}:
	default:
	}
}

// run fans out new events until ctx ends, then waits for the workers.
func (q *sender) run(ctx context.Context) {
	q.mu.Lock()
	q.ctx = ctx
	// The workers of an earlier run (before a lease was lost) ended
	// with its context.
	clear(q.workers)
	q.mu.Unlock()
	defer func() {
		// kick starts workers (wg.Add) under q.mu while q.ctx is set:
		// once it is cleared under q.mu no Add can follow, so Wait never
		// runs beside one (a kick that read ctx alive just before it
		// ended would otherwise Add while Wait runs).
		q.mu.Lock()
		q.ctx = nil
		q.mu.Unlock()
		q.wg.Wait()
	}()
	if err := q.init(ctx); err != nil {
		q.s.log.Error("federation sender: init", "err", err)
	}
	// Resume destinations with queued work from before a restart.
	if dests, err := q.queuedDestinations(ctx); err == nil {
		for _, d := range dests {
			q.kick(d)
		}
	}
	ticker := time.NewTicker(2 * time.Second)
	defer ticker.Stop()
	for {
		if err := q.fanOut(ctx); err != nil && ctx.Err() == nil {
			q.s.log.Warn("federation sender: fan-out", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-q.wakeCh:
		case <-ticker.C:
			if q.shared {
				q.kickQueued(ctx)
			}
		}
	}
}

// kickQueued starts a worker for each destination with queued rows and
// none running. In a split deployment a process that does not run the
// federation API queues EDUs (typing, receipts, to-device, device
// lists) for this process's sender, which learns of them here, within a
// tick.
func (q *sender) kickQueued(ctx context.Context) {
	dests, err := q.queuedDestinations(ctx)
	if err != nil {
		if ctx.Err() == nil {
			q.s.log.Warn("federation sender: reading the queued destinations", "err", err)
		}
		return
	}
	for _, d := range dests {
		q.mu.Lock()
		_, running := q.workers[d]
		q.mu.Unlock()
		if !running {
			q.kick(d)
		}
	}
}

// init stores the starting position on first start: the current end of
// the stream (history from before federation was enabled is not sent).
func (q *sender) init(ctx context.Context) error {
	var pos int64
	err := q.s.db.Reader().QueryRow(ctx, `SELECT fanout_pos FROM federation_sender_state WHERE id = 1`).Scan(&pos)
	if err == nil || !storage.IsNoRows(err) {
		return err
	}
	if pos, err = q.s.rooms.StreamPosition(ctx); err != nil {
		return err
	}
	return q.s.db.Write(ctx, func(tx storage.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO federation_sender_state (id, fanout_pos) VALUES (1, $1) ON CONFLICT (id) DO NOTHING`, pos)
		return err
	})
}

func (q *sender) queuedDestinations(ctx context.Context) ([]string, error) {
	return storage.QueryColumn[string](ctx, q.s.db.Reader(), `SELECT DISTINCT destination FROM federation_queue_pdus
		UNION SELECT DISTINCT destination FROM federation_queue_edus`)
}

// fanOut queues the events after fanout_pos for their destinations.
func (q *sender) fanOut(ctx context.Context) error {
	for {
		var pos int64
		if err := q.s.db.Reader().QueryRow(ctx, `SELECT fanout_pos FROM federation_sender_state WHERE id = 1`).Scan(&pos); err != nil {
			return err
		}
		events, end, err := q.s.rooms.LocalEventsAfter(ctx, pos, 200)
		if err != nil {
			return err
		}
		if end == pos {
			return nil
		}
		touched := map[string]bool{}
		err = q.s.db.Write(ctx, func(tx storage.Tx) error {
			for _, ev := range events {
				for _, d := range ev.Destinations {
					if _, err := tx.Exec(ctx, `INSERT INTO federation_queue_pdus (destination, event_nid) VALUES ($1, $2)
						ON CONFLICT (destination, event_nid) DO NOTHING`, d, ev.Pos); err != nil {
						return err
					}
					touched[d] = true
				}
			}
			_, err := tx.Exec(ctx, `UPDATE federation_sender_state SET fanout_pos = $1 WHERE id = 1 AND fanout_pos = $2`, end, pos)
			return err
		})
		if err != nil {
			return err
		}
		for d := range touched {
			q.kick(d)
		}
	}
}

// relay queues an event another server sent us through send_join,
// send_leave or send_knock for the other servers in the room: that
// server talked only to us, so we send the event on its behalf (it is
// not ours, so fanOut skips it). The origin already has it.
// Spec: server-server-api, "Joining Rooms" (the resident server sends
// the join to the other servers), "Leaving Rooms", "Knocking".
func (s *Server) relay(ctx context.Context, roomID string, pos int64, origin string) error {
	servers, err := s.rooms.JoinedServers(ctx, roomID)
	if err != nil {
		return err
	}
	var dests []string
	for _, d := range servers {
		if d != "" && d != s.serverName && d != origin {
			dests = append(dests, d)
		}
	}
	if len(dests) == 0 {
		return nil
	}
	err = s.db.Write(ctx, func(tx storage.Tx) error {
		for _, d := range dests {
			if _, err := tx.Exec(ctx, `INSERT INTO federation_queue_pdus (destination, event_nid) VALUES ($1, $2)
				ON CONFLICT (destination, event_nid) DO NOTHING`, d, pos); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, d := range dests {
		s.sender.kick(d)
	}
	return nil
}

// serverJoiningBy returns the server of the user p joins to its room
// when that server is neither this one nor, as far as this server knows,
// in the room yet; otherwise "".
func (s *Server) serverJoiningBy(ctx context.Context, p *parsedPDU) string {
	if p.pdu.Type() != "m.room.member" || p.pdu.StateKey() == nil {
		return ""
	}
	if m, err := p.pdu.Membership(); err != nil || m != "join" {
		return ""
	}
	server := domainOf(*p.pdu.StateKey())
	if server == "" || server == s.serverName {
		return ""
	}
	if in, err := s.rooms.ServerInRoom(ctx, server, p.pdu.RoomID().String()); err != nil || in {
		return ""
	}
	return server
}

// catchUpJoinedServer queues for server, whose first join into roomID
// this server has just accepted from another server (the resident server
// relays joins made through it), this server's own events among the
// room's forward extremities. Events of ours created before the join
// reached us went only to the servers we knew of, so the joined server
// may never have been sent them, and nothing it receives later need name
// them. With the newest of them it gets their place in the DAG, and
// fetches what lies before them with get_missing_events, as for any gap.
// Receivers ignore an event they already have (its event ID).
// Spec: server-server-api, "PDUs" (events are sent to every server in
// the room) and "POST /_matrix/federation/v1/get_missing_events".
func (s *Server) catchUpJoinedServer(ctx context.Context, roomID, server string) {
	ids, err := s.rooms.Extremities(ctx, roomID)
	if err != nil {
		s.log.Warn("catch-up of a joined server: forward extremities", "room_id", roomID, "err", err)
		return
	}
	var positions []int64
	for _, id := range ids {
		ev, _, err := s.rooms.FederationEvent(ctx, id)
		if err == nil && domainOf(ev.Sender) == s.serverName && ev.StreamPos > 0 {
			positions = append(positions, ev.StreamPos)
		}
	}
	if len(positions) == 0 {
		return
	}
	err = s.db.Write(ctx, func(tx storage.Tx) error {
		for _, pos := range positions {
			if _, err := tx.Exec(ctx, `INSERT INTO federation_queue_pdus (destination, event_nid) VALUES ($1, $2)
				ON CONFLICT (destination, event_nid) DO NOTHING`, server, pos); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		s.log.Warn("catch-up of a joined server: queueing", "room_id", roomID, "server", server, "err", err)
		return
	}
	s.sender.kick(server)
}

// QueueEDU implements EDUQueue.
func (s *Server) QueueEDU(ctx context.Context, destinations []string, eduType string, content any) error {
	raw, err := json.Marshal(map[string]any{"edu_type": eduType, "content": content})
	if err != nil {
		return err
	}
	var dests []string
	for _, d := range destinations {
		if d != "" && d != s.serverName {
			dests = append(dests, d)
		}
	}
	err = s.db.Write(ctx, func(tx storage.Tx) error {
		for _, d := range dests {
			if _, err := tx.Exec(ctx, `INSERT INTO federation_queue_edus (destination, edu, created_ts) VALUES ($1, $2, $3)`,
				d, string(raw), s.now().UnixMilli()); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, d := range dests {
		s.sender.kick(d)
	}
	return nil
}

// kick wakes destination's worker, starting one if none runs.
func (q *sender) kick(destination string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.ctx == nil || q.ctx.Err() != nil {
		return
	}
	if w, ok := q.workers[destination]; ok {
		select {
		case w.kick <- struct{}{}:
		default:
		}
		return
	}
	w := &destWorker{kick: make(chan struct{}, 1)}
	q.workers[destination] = w
	q.wg.Add(1)
	go q.work(q.ctx, destination, w)
}

// destinationUp resets the backoff of a server that just talked to us, or
// answered a request of ours (client.answered), and wakes its worker. It
// reads federation_destinations only when the view says the server may
// have failures recorded (backoffView).
func (q *sender) destinationUp(ctx context.Context, destination string) {
	seq, failing := q.view.answered(destination)
	if !failing {
		return
	}
	q.reads.Add(1)
	var failures int
	err := q.s.db.Reader().QueryRow(ctx, `SELECT failures FROM federation_destinations WHERE server_name = $1`, destination).Scan(&failures)
	if storage.IsNoRows(err) || err == nil && failures == 0 {
		q.view.markHealthy(destination, seq)
		return
	}
	if err != nil {
		return
	}
	err = q.s.db.Write(ctx, func(tx storage.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE federation_destinations SET failures = 0, retry_at_ts = 0 WHERE server_name = $1`, destination)
		return err
	})
	if err == nil {
		q.view.markHealthy(destination, seq)
		q.kick(destination)
	}
}

// batch is one outbound transaction: the queue rows marked with txnID.
type batch struct {
	txnID string
	pdus  []json.RawMessage
	edus  []json.RawMessage
	// hasPDUs: queue rows of events are marked with txnID (b.pdus may
	// hold fewer if an event could not be read).
	hasPDUs bool
}

// work sends destination's queue until it is empty, then exits.
func (q *sender) work(ctx context.Context, destination string, w *destWorker) {
	defer q.wg.Done()
	log := q.s.log.With("destination", destination)
	idle := time.NewTimer(0)
	defer idle.Stop()
	for {
		wait, err := q.retryWait(ctx, destination)
		if err != nil {
			wait = time.Second
		}
		if wait > 0 {
			idle.Reset(wait)
			select {
			case <-ctx.Done():
				return
			case <-idle.C:
			case <-w.kick:
			}
			continue
		}
		b, err := q.nextBatch(ctx, destination)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Warn("federation sender: reading queue", "err", err)
			b = nil
		}
		if b == nil {
			// Nothing to send: exit, unless a kick raced in.
			q.mu.Lock()
			select {
			case <-w.kick:
				q.mu.Unlock()
				continue
			default:
			}
			delete(q.workers, destination)
			q.mu.Unlock()
			return
		}
		err = q.send(ctx, destination, b)
		if ctx.Err() != nil {
			return
		}
		if err := q.record(ctx, destination, b, err, log); err != nil {
			log.Warn("federation sender: recording result", "err", err)
		}
	}
}

// retryWait returns how long to wait before destination may be tried.
func (q *sender) retryWait(ctx context.Context, destination string) (time.Duration, error) {
	var retryAt int64
	err := q.s.db.Reader().QueryRow(ctx, `SELECT retry_at_ts FROM federation_destinations WHERE server_name = $1`, destination).Scan(&retryAt)
	if storage.IsNoRows(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return time.Duration(retryAt-q.s.now().UnixMilli()) * time.Millisecond, nil
}

// nextBatch returns the transaction in flight for destination, if any,
// or records a new one from the head of its queue; nil when empty.
//
// A transaction is the set of queue rows marked with its txn_id, never a
// range of positions: rows can be queued below the positions of a
// transaction in flight (a relayed join, a joined server's catch-up, an
// EDU whose PostgreSQL id was drawn before a sent one's but committed
// after it). They stay unmarked, so a retry carries the same rows under
// the same txnId and the next transaction takes them.
// Spec: server-server-api, "Transactions" (the receiver deduplicates by
// transaction ID, so a txnId's contents must not change).
func (q *sender) nextBatch(ctx context.Context, destination string) (*batch, error) {
	var txnID string
	var nids []int64
	var edus []json.RawMessage
	err := q.s.db.Write(ctx, func(tx storage.Tx) error {
		var pending *string
		var seq int64
		err := tx.QueryRow(ctx, `SELECT txn_id, txn_seq FROM federation_destinations WHERE server_name = $1`,
			destination).Scan(&pending, &seq)
		if storage.IsNoRows(err) {
			if _, err := tx.Exec(ctx, `INSERT INTO federation_destinations (server_name) VALUES ($1)`, destination); err != nil {
				return err
			}
		} else if err != nil {
			return err
		}
		if pending != nil && *pending != "" {
			if nids, edus, err = markedRows(ctx, tx, destination, *pending); err != nil {
				return err
			}
			if len(nids) > 0 || len(edus) > 0 {
				txnID = *pending
				return nil
			}
			// Its rows are gone: the transaction is over.
			if _, err := tx.Exec(ctx, `UPDATE federation_destinations SET txn_id = NULL WHERE server_name = $1`, destination); err != nil {
				return err
			}
		}
		seq++
		id := "m" + itoa(q.s.now().UnixMilli()) + "." + itoa(seq)
		// EDUs kept from a refused transaction go first, alone (see
		// record): if the destination refuses them again, they are the
		// cause, not the PDUs they came with.
		var resend int
		if err := tx.QueryRow(ctx, `SELECT COUNT(*) FROM federation_queue_edus
			WHERE destination = $1 AND txn_id IS NULL AND resend = 1`, destination).Scan(&resend); err != nil {
			return err
		}
		if resend > 0 {
			if _, err := tx.Exec(ctx, `UPDATE federation_queue_edus SET txn_id = $2 WHERE edu_nid IN (
				SELECT edu_nid FROM federation_queue_edus WHERE destination = $1 AND txn_id IS NULL AND resend = 1
				ORDER BY edu_nid LIMIT $3)`, destination, id, maxTxnEDUs); err != nil {
				return err
			}
		} else {
			// Each UPDATE reads and marks the head of the queue in one
			// statement, so exactly the rows it read are marked.
			if _, err := tx.Exec(ctx, `UPDATE federation_queue_pdus SET txn_id = $2 WHERE destination = $1 AND event_nid IN (
				SELECT event_nid FROM federation_queue_pdus WHERE destination = $1 AND txn_id IS NULL ORDER BY event_nid LIMIT $3)`,
				destination, id, maxTxnPDUs); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `UPDATE federation_queue_edus SET txn_id = $2 WHERE edu_nid IN (
				SELECT edu_nid FROM federation_queue_edus WHERE destination = $1 AND txn_id IS NULL ORDER BY edu_nid LIMIT $3)`,
				destination, id, maxTxnEDUs); err != nil {
				return err
			}
		}
		if nids, edus, err = markedRows(ctx, tx, destination, id); err != nil {
			return err
		}
		if len(nids) == 0 && len(edus) == 0 {
			return nil
		}
		txnID = id
		_, err = tx.Exec(ctx, `UPDATE federation_destinations SET txn_id = $2, txn_seq = $3 WHERE server_name = $1`,
			destination, id, seq)
		return err
	})
	if err != nil || txnID == "" {
		return nil, err
	}
	b := &batch{txnID: txnID, edus: edus, hasPDUs: len(nids) > 0}
	if b.pdus, err = q.pduJSON(ctx, nids); err != nil {
		return nil, err
	}
	return b, nil
}

// markedRows returns the event positions and EDUs of destination's queue
// rows marked with txnID, each in queue order.
func markedRows(ctx context.Context, tx storage.Querier, destination, txnID string) ([]int64, []json.RawMessage, error) {
	nids, err := storage.QueryColumn[int64](ctx, tx, `SELECT event_nid FROM federation_queue_pdus
		WHERE destination = $1 AND txn_id = $2 ORDER BY event_nid`, destination, txnID)
	if err != nil {
		return nil, nil, err
	}
	raw, err := storage.QueryColumn[string](ctx, tx, `SELECT edu FROM federation_queue_edus
		WHERE destination = $1 AND txn_id = $2 ORDER BY edu_nid`, destination, txnID)
	if err != nil {
		return nil, nil, err
	}
	var edus []json.RawMessage
	for _, edu := range raw {
		edus = append(edus, json.RawMessage(edu))
	}
	return nids, edus, nil
}

func (q *sender) pduJSON(ctx context.Context, nids []int64) ([]json.RawMessage, error) {
	if len(nids) == 0 {
		return nil, nil
	}
	return q.s.rooms.EventsByPosition(ctx, nids)
}

// send PUTs one transaction.
func (q *sender) send(ctx context.Context, destination string, b *batch) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	body := map[string]any{
		"origin": q.s.serverName, "origin_server_ts": q.s.now().UnixMilli(),
		"pdus": nonNil(b.pdus), "edus": nonNil(b.edus),
	}
	// client.do, not signed: record applies the outcome to the backoff.
	return q.s.client.do(ctx, destination, http.MethodPut, "/_matrix/federation/v1/send/"+pathEscape(b.txnID), body, nil, true, maxResponseBytes)
}

func nonNil(v []json.RawMessage) []json.RawMessage {
	if v == nil {
		return []json.RawMessage{}
	}
	return v
}

// record applies a send's outcome: on success (or a 4xx that retrying
// cannot fix, so the queue never wedges: security case 7) the batch's rows
// go and the backoff resets; otherwise the destination backs off and the
// same transaction is retried later.
//
// Spec: server-server-api, "PUT /_matrix/federation/v1/send/{txnId}":
// the sender must retry until a 200 before it sends another txnId. That
// holds for whatever can pass: no answer, 5xx, 401 (our key not yet
// known there), 404 (a server being set up or taken down), 429, and the
// 4xx that HTTP defines as transient (408 Request Timeout, 425 Too
// Early). Any other 4xx (400, 403, 413, ...) refuses these very bytes,
// which a retry sends again unchanged, so retrying could only block
// every later event and EDU for the destination: the transaction is
// dropped. Its events still reach the destination through the
// prev_events of later ones (get_missing_events). Synapse does not resend
// a refused transaction either: it sends the rooms' latest events later
// instead (catch-up). Its EDUs that must be delivered (to-device
// messages, device-list and signing-key updates: issue 7, "retried until
// acknowledged") are kept and sent again in a transaction of their own
// (nextBatch); the others (typing, receipts, presence) are ephemeral and
// go with it. A refused transaction that held no PDUs was refused for
// its EDUs, so it is dropped whole: kept EDUs are sent alone at most once
// more, never in a loop.
func (q *sender) record(ctx context.Context, destination string, b *batch, sendErr error, log interface {
	Info(string, ...any)
}) error {
	var re *RemoteError
	permanent := errors.As(sendErr, &re) && re.Status >= 400 && re.Status < 500 &&
		re.Status != http.StatusUnauthorized && re.Status != http.StatusTooManyRequests && re.Status != http.StatusNotFound &&
		re.Status != http.StatusRequestTimeout && re.Status != http.StatusTooEarly
	if sendErr != nil && !permanent {
		return q.recordFailure(ctx, destination, sendErr, log)
	}
	healthy := q.view.snapshot()
	kept := 0
	err := q.s.db.Write(ctx, func(tx storage.Tx) error {
		kept = 0
		if permanent && b.hasPDUs {
			var err error
			if kept, err = keepMustDeliverEDUs(ctx, tx, destination, b.txnID); err != nil {
				return err
			}
		}
		// Exactly the transaction's rows: those queued while it was in
		// flight wait for the next one.
		if _, err := tx.Exec(ctx, `DELETE FROM federation_queue_pdus WHERE destination = $1 AND txn_id = $2`, destination, b.txnID); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM federation_queue_edus WHERE destination = $1 AND txn_id = $2`, destination, b.txnID); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `UPDATE federation_destinations SET txn_id = NULL, failures = 0, retry_at_ts = 0 WHERE server_name = $1`, destination)
		return err
	})
	if err == nil {
		q.view.markHealthy(destination, healthy)
	}
	if err == nil && permanent {
		if b.hasPDUs {
			log.Info("federation sender: destination refused the transaction; dropped its PDUs and ephemeral EDUs",
				"err", sendErr, "txn_id", b.txnID, "edus_kept", kept)
		} else {
			log.Info("federation sender: destination refused a transaction of EDUs only; dropped it",
				"err", sendErr, "txn_id", b.txnID, "edus", len(b.edus))
		}
	}
	return err
}

// recordFailure counts a failed send to destination and sets when it
// may be tried again. The view holds destination from before the write
// (backoffView); in split mode its first failure is announced to the
// other processes' views (backoffWakeStream).
func (q *sender) recordFailure(ctx context.Context, destination string, sendErr error, log interface {
	Info(string, ...any)
}) error {
	defer q.view.beginFailure(destination)()
	var failures int
	var pos int64
	err := q.s.db.Write(ctx, func(tx storage.Tx) error {
		pos = 0
		if err := tx.QueryRow(ctx, `SELECT failures FROM federation_destinations WHERE server_name = $1`,
			destination).Scan(&failures); err != nil {
			return err
		}
		first := failures == 0
		failures++
		if _, err := tx.Exec(ctx, `UPDATE federation_destinations SET failures = $2, retry_at_ts = $3 WHERE server_name = $1`,
			destination, failures, q.s.now().Add(q.backoff(failures)).UnixMilli()); err != nil {
			return err
		}
		if first && q.s.wakes != nil {
			var err error
			pos, err = raiseWakePosition(ctx, tx, backoffWakeStream)
			return err
		}
		return nil
	})
	if err != nil {
		return err
	}
	log.Info("federation sender: transaction failed; backing off", "err", sendErr, "failures", failures, "retry_in", q.backoff(failures))
	if pos > 0 {
		q.s.wakes.Notify(backoffWakeStream, pos)
	}
	return nil
}

// mustDeliverEDU lists the EDU types a refused transaction does not drop.
// Spec: server-server-api, "Send-to-device messaging" and "Device
// Management" (a missed device-list update leaves the receiver's cache
// stale until the next one); issue 7.
var mustDeliverEDU = map[string]bool{
	"m.direct_to_device":   true,
	"m.device_list_update": true,
	"m.signing_key_update": true,
}

// keepMustDeliverEDUs unmarks the must-deliver EDUs of the refused
// transaction txnID and flags them for a transaction of their own, in
// the caller's transaction that then deletes the rows still marked. It
// returns how many it kept.
func keepMustDeliverEDUs(ctx context.Context, tx storage.Tx, destination, txnID string) (int, error) {
	rows, err := tx.Query(ctx, `SELECT edu_nid, edu FROM federation_queue_edus WHERE destination = $1 AND txn_id = $2`,
		destination, txnID)
	if err != nil {
		return 0, err
	}
	var keep []int64
	for rows.Next() {
		var nid int64
		var raw string
		if err := rows.Scan(&nid, &raw); err != nil {
			rows.Close()
			return 0, err
		}
		var edu struct {
			Type string `json:"edu_type"`
		}
		if json.Unmarshal([]byte(raw), &edu) == nil && mustDeliverEDU[edu.Type] {
			keep = append(keep, nid)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	for _, nid := range keep {
		if _, err := tx.Exec(ctx, `UPDATE federation_queue_edus SET txn_id = NULL, resend = 1 WHERE edu_nid = $1`, nid); err != nil {
			return 0, err
		}
	}
	return len(keep), nil
}

// backoff is min_backoff × 2^(failures-1), capped at max_backoff.
func (q *sender) backoff(failures int) time.Duration {
	base, limit := q.s.cfg.MinBackoff.D(), q.s.cfg.MaxBackoff.D()
	if base <= 0 {
		base = 10 * time.Second
	}
	if limit <= 0 {
		limit = 24 * time.Hour
	}
	wait := base
	for i := 1; i < failures && wait < limit; i++ {
		wait *= 2
	}
	return min(wait, limit)
}
