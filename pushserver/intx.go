package pushserver

import (
	"context"
	"sync"

	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
)

// Counting in the event's own transaction.
//
// A new timeline event's notifications (push_notifications rows and the
// unread summary, the sender's read marker, push_queue rows for the
// recipients' pushers) are
// written by CountInTx, the roomserver's TimelineHook, inside the
// transaction that writes the event, in whichever process writes it
// (every process that builds the roomserver builds this component too).
// So a /sync response that carries a message also carries the unread
// counts it raised, from one wake: there is no later commit of counts
// to wake the same listeners again. Synapse likewise computes an
// event's push actions before persisting it and stores them with it.
// What stays asynchronous is what must: sending to push gateways (the
// sender drains push_queue) and receipts (the receipt consumer moves
// read markers), and copying push rules on a room upgrade join.
//
// Exactness. Everything evaluation reads is read inside the transaction
// or keyed by something immutable:
//   - the room's members, power levels, name and alias: the state before
//     the event, read through the transaction; cached by (room, state
//     snapshot NID), which names one state forever once committed, and
//     filled only after the commit (a rolled-back snapshot's NID may be
//     reused);
//   - each recipient's rules: read through the transaction; cached
//     compiled, tagged with push_rules_version, a counter every rule
//     change bumps in its own transaction and CountInTx reads in the
//     event's (so a change made in another process is seen at once);
//   - pushers: read through the transaction (enqueue).
//
// Events from before this way of counting (a database upgraded with
// events the old consumer had not reached yet) are counted by the
// consumer, up to inTxFrom.

// inTxStream is the push_positions row holding inTxFrom.
const inTxStream = "room_events_in_tx"

// loadInTxFrom returns the position after which events are counted in
// their own transaction, recording the room stream's head as that
// position the first time. Every process records or reads it before its
// roomserver writes anything, so no event after it was written without
// CountInTx.
func (s *Server) loadInTxFrom(ctx context.Context) (int64, error) {
	head, err := s.rooms.StreamPosition(ctx)
	if err != nil {
		return 0, err
	}
	var pos int64
	err = s.db.Write(ctx, func(tx storage.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO push_positions (stream, position) VALUES ($1, $2)
			ON CONFLICT (stream) DO NOTHING`, inTxStream, head); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT position FROM push_positions WHERE stream = $1`, inTxStream).Scan(&pos)
	})
	return pos, err
}

// CountInTx is the roomserver's TimelineHook (roomserver.Deps.OnTimeline):
// it evaluates ev for the room's local members and writes what it
// raises in tx. The function it returns, run right after the roomserver
// has notified the room stream of the commit, notifies CountsStream at
// the event's position and wakes the gateway sender.
func (s *Server) CountInTx(ctx context.Context, tx storage.Tx, te roomserver.TimelineEvent) (func(), error) {
	ev := te.Event
	thread := s.threadOf(ev)
	room, err := s.roomInfoAt(ctx, tx, te)
	if err != nil {
		return nil, err
	}
	rules := txRulesReader{s: s, tx: tx}
	notes, mark, err := s.evaluateIn(ctx, ev, thread, room, rules.rulesFor)
	if err != nil {
		return nil, err
	}
	var marks []readMark
	if mark != nil {
		// The event is the newest of the room: its position is past
		// every notification there (moveReadMark).
		mark.newest = true
		marks = append(marks, *mark)
	}
	queued := false
	if len(notes) > 0 || len(marks) > 0 {
		if queued, err = s.writeNotifications(ctx, tx, notes, marks, s.now().UnixMilli()); err != nil {
			return nil, err
		}
	}
	if ev.Type == "m.room.member" && ev.StateKey != nil && ev.Membership == "join" && s.isLocal(*ev.StateKey) {
		// The consumer's next pass has a join to look at
		// (copyRulesOnUpgradeJoin): counted before the commit is
		// acknowledged or notified, so the wake it causes sees it.
		tx.OnCommit(func() { s.localJoins.Add(1) })
	}
	pos := ev.StreamPos
	return func() {
		if s.eventsPos.Load() >= s.inTxFrom {
			// Before that the consumer is still counting older events:
			// it notifies CountsStream itself when it is done.
			s.notifier.Notify(CountsStream, pos)
		}
		if queued {
			s.kickSender()
		}
	}, nil
}

// roomInfoAt returns the roomInfo of the state te's event comes after.
func (s *Server) roomInfoAt(ctx context.Context, tx storage.Tx, te roomserver.TimelineEvent) (*roomInfo, error) {
	key := stateKey{roomID: te.Event.RoomID, nid: te.StateNID}
	if te.StateNID != 0 {
		if info := s.atState.get(key); info != nil {
			return info, nil
		}
	}
	state, err := te.State(ctx, roomInfoTypes)
	if err != nil {
		return nil, err
	}
	info := s.roomInfoOf(state)
	if te.StateNID != 0 {
		tx.AfterCommit(func() { s.atState.put(key, info) })
	}
	return info, nil
}

// stateKey names a room's state: its snapshot NID.
type stateKey struct {
	roomID string
	nid    int64
}

// stateInfoCache holds, per room, the roomInfo of one committed state
// snapshot: the last one stored. Entries never go stale (a committed
// snapshot never changes); a lookup of any other snapshot of the room
// misses. One entry per room, not one per snapshot: a room's events
// are written against its current state, so the older snapshots' infos
// are not asked for again, and keeping them made the cache grow with
// every membership change (a room that 200 users join held 200 infos
// of up to 200 members each, kept alive long after, which a long-running
// server paid for in garbage collection; docs/benchmarks.md, "Fan-out
// delivery, part 5"). The map is cleared when it holds limit rooms.
type stateInfoCache struct {
	mu     sync.Mutex
	byRoom map[string]stateInfo // guarded by mu
	limit  int
}

// stateInfo is a room's cached roomInfo and the snapshot it describes.
type stateInfo struct {
	nid  int64
	info *roomInfo
}

func newStateInfoCache() *stateInfoCache {
	return &stateInfoCache{byRoom: map[string]stateInfo{}, limit: maxRoomCache}
}

func (c *stateInfoCache) get(k stateKey) *roomInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byRoom[k.roomID]; ok && e.nid == k.nid {
		return e.info
	}
	return nil
}

// put stores info as the room's entry, replacing the one for any other
// snapshot of the room.
func (c *stateInfoCache) put(k stateKey, info *roomInfo) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.byRoom[k.roomID]; !ok && len(c.byRoom) >= c.limit {
		clear(c.byRoom)
	}
	c.byRoom[k.roomID] = stateInfo{nid: k.nid, info: info}
}

// txRulesReader reads recipients' rules for one CountInTx call: the
// rules version once, then each user's compiled rules from the cache
// when it holds that version, else from tx.
type txRulesReader struct {
	s           *Server
	tx          storage.Tx
	version     int64
	versionRead bool
}

func (r *txRulesReader) rulesFor(ctx context.Context, userID string) (*compiledRules, error) {
	if !r.versionRead {
		if err := r.tx.QueryRow(ctx, `SELECT version FROM push_rules_version WHERE id = 1`).Scan(&r.version); err != nil {
			return nil, err
		}
		r.versionRead = true
	}
	c := r.s.txRules
	if cr := c.get(r.version, userID); cr != nil {
		return cr, nil
	}
	u, err := loadUserRules(ctx, r.tx, userID, r.s.cfg.ThreadSubscriptionRules)
	if err != nil {
		return nil, err
	}
	cr := compile(u.render(userID))
	// The rules were read after the version: they are at least as new
	// as it, so they are right for every reader that reads it too.
	c.put(r.version, userID, cr)
	return cr, nil
}

// versionedRules caches compiled rules for one push_rules_version.
type versionedRules struct {
	mu      sync.Mutex
	version int64                     // guarded by mu
	byID    map[string]*compiledRules // guarded by mu; rules at version
	limit   int
}

func newVersionedRules() *versionedRules {
	return &versionedRules{version: -1, byID: map[string]*compiledRules{}, limit: 50000}
}

// get returns userID's cached rules if the cache is at version (moving
// it there, empty, when version is newer).
func (c *versionedRules) get(version int64, userID string) *compiledRules {
	c.mu.Lock()
	defer c.mu.Unlock()
	if version > c.version {
		clear(c.byID)
		c.version = version
	}
	if version != c.version {
		return nil // a reader of an older version: read from its tx
	}
	return c.byID[userID]
}

// put caches userID's rules, read at version or later, if the cache is
// still at version.
func (c *versionedRules) put(version int64, userID string, cr *compiledRules) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if version != c.version {
		return
	}
	if len(c.byID) >= c.limit {
		clear(c.byID)
	}
	c.byID[userID] = cr
}
