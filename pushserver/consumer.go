package pushserver

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"slices"
	"strconv"
	"time"

	"github.com/tidwall/gjson"

	"github.com/myelin-chat/myelin/internal/notifier"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
)

// mainThread is the thread ID of the main timeline.
const mainThread = "main"

// Batch sizes and the fallback poll of the consumers.
const (
	eventBatch   = 200
	receiptBatch = 500
	pollEvery    = 2 * time.Second
	// passEvery spaces the passes of a busy consumer: a wake that comes
	// sooner than this after the previous pass began waits out the rest.
	// Under load every commit (a few hundred µs apart) wakes the consumer,
	// and each pass costs two reads and a write of its own in the shared
	// writer whether it carries one event or twenty; spaced, a burst is
	// read and written in one pass. A wake after a quiet spell (a pass
	// longer ago than this) is served at once, so an idle server's
	// notifications are not delayed.
	passEvery = 2 * time.Millisecond
	// joinsPassEvery spaces the room-event passes once the consumer is
	// past inTxFrom. Every event's notifications are then written in its
	// own transaction (CountInTx), and a pass only looks for local
	// users' joins to copy their rules to an upgraded room (JoinsAfter):
	// nothing waits on it but that copy. Each pass is a read transaction
	// whose pages every commit has evicted from the reader's cache
	// (~100 µs of CPU); at passEvery, 8 senders spent ~6 % of the
	// server's CPU on passes that found nothing (docs/benchmarks.md,
	// "Concurrent senders, part 7").
	joinsPassEvery = 25 * time.Millisecond
	// quietJoinsPassEvery spaces the room-event passes past inTxFrom
	// while no local join has committed since the last pass began (see
	// Server.localJoins): a message, the usual event, gives such a pass
	// nothing to do. One pass this often still finds a join the counter
	// did not see (one that reached the timeline another way than
	// CountInTx). On a server sending a message every few hundred ms,
	// a pass per message was a read transaction and two goroutine wakes
	// per message, run while the message's delivery was being built
	// (docs/benchmarks.md, "Low-rate sends (lowrate)").
	quietJoinsPassEvery = pollEvery
	// lazyStoreEvents and lazyStoreEvery bound how far the events
	// consumer's in-memory position runs ahead of its stored one when a
	// pass has nothing else to write (see consumeEvents).
	lazyStoreEvents = 1000
	lazyStoreEvery  = 5 * time.Second
	// quietPassLull: a quiet room-event pass (see quietJoinsPassEvery)
	// that comes due less than quietPassLull after the room stream last
	// moved waits until then; one that comes due in a longer gap runs,
	// and the next is spaced from that gap's start plus quietPassLull,
	// so that it comes due in the lull after an event. Spaced from the
	// previous pass's start alone, the passes kept a fixed phase, set
	// by a pass begun at a message's notification: at a message every
	// 500 ms the pass (a read transaction, and every lazyStoreEvery a
	// commit with its fsync in the shared writer) came back with every
	// fourth message, at its commit or in the middle of its delivery to
	// the room's long polls, the moment its latency is made; and a phase
	// late in the gap is just before the next message. quietPassLull
	// after an event its delivery is over (a few ms for 20 listeners,
	// 20-45 ms for 200: docs/benchmarks.md, "fan20"). A stream that
	// never pauses this long gets its quiet pass anyway once it has
	// waited a further quietJoinsPassEvery.
	quietPassLull = 50 * time.Millisecond
)

// runConsumer processes the room event and receipt streams until ctx
// ends, woken by the notifier and by a fallback poll.
//
// A wake reads only the streams whose notified position moved since the
// last read: every commit of a busy server wakes the consumer, often for
// a stream it does not read (typing, presence, its own counts stream), or
// for room events only; an empty read of the other stream cost as much as
// a useful one. The first run, a run after an error or a full batch, and
// every fallback poll read both streams, so a lost notification still
// only delays (DESIGN.md, "The database is the log"). Passes of a busy
// consumer are at least passEvery apart (see there).
func (s *Server) runConsumer(ctx context.Context) {
	var seen notifier.Positions // positions at the last read; nil: read both
	var eventsReadAt time.Time  // when the last room-event pass began
	var joinsAtRead int64       // s.localJoins when that pass began
	var roomHeard int64         // the room stream position last heard
	var roomMovedAt time.Time   // when it was first heard (quietPassLull)
	var lullSince time.Time     // when a due quiet pass was first put off for a lull; zero: none is
	for {
		changed := s.notifier.Changed()
		now := s.notifier.Positions()
		if p := now[roomserver.Stream]; p != roomHeard {
			roomHeard, roomMovedAt = p, time.Now()
		}
		joins := s.localJoins.Load() // before the read: a join after it is read next time
		events := seen == nil || now[roomserver.Stream] != seen[roomserver.Stream]
		receipts := seen == nil || now[receiptsStream] != seen[receiptsStream]
		var eventsDue <-chan time.Time // set when a room-event pass is put off
		var lullAnchor time.Time       // when set, the time the next pass is spaced from
		if events && seen != nil && s.eventsPos.Load() >= s.inTxFrom {
			every := joinsPassEvery
			quiet := !s.shared && joins == joinsAtRead
			if quiet {
				every = quietJoinsPassEvery
			}
			rest := every - time.Since(eventsReadAt)
			if quiet && rest <= 0 {
				// Due: not during a room event's commit and delivery.
				if lullSince.IsZero() {
					lullSince = time.Now()
				}
				since := time.Since(roomMovedAt)
				if since < quietPassLull && time.Since(lullSince) < quietJoinsPassEvery {
					rest = quietPassLull - since
				} else if since >= 2*quietPassLull {
					// Due in a gap between events, where the next may
					// come at any moment: run, but space the next pass
					// from this gap's lull, so that it comes due in the
					// lull after an event.
					lullAnchor = roomMovedAt.Add(quietPassLull)
				}
			}
			if rest > 0 {
				events, eventsDue = false, time.After(rest)
			}
		}
		passStarted := time.Now()
		if events {
			eventsReadAt, joinsAtRead, lullSince = passStarted, joins, time.Time{}
			if !lullAnchor.IsZero() {
				eventsReadAt = lullAnchor
			}
			if s.onEventsPass != nil {
				s.onEventsPass(passStarted, roomHeard, roomMovedAt)
			}
		}
		var more bool
		var err error
		if events || receipts {
			more, err = s.consumeOnce(ctx, events, receipts)
		}
		if ctx.Err() != nil {
			return
		}
		if eventsDue != nil {
			// Still unread: the room stream stays at its last read position.
			now[roomserver.Stream] = seen[roomserver.Stream]
		}
		seen = now
		if err != nil {
			s.log.Error("push consumer failed; retrying", "err", err)
			more, seen = false, nil
		}
		if more {
			seen = nil
			continue
		}
		select {
		case <-changed:
			if rest := passEvery - time.Since(passStarted); rest > 0 {
				select {
				case <-time.After(rest):
				case <-ctx.Done():
					return
				}
			}
		case <-eventsDue:
		case <-time.After(pollEvery):
			seen = nil
		case <-ctx.Done():
			return
		}
	}
}

// consumeOnce runs one batch of each stream asked for and reports
// whether either had more to read.
func (s *Server) consumeOnce(ctx context.Context, events, receipts bool) (bool, error) {
	var moreEvents, moreReceipts bool
	var err error
	if events {
		if moreEvents, err = s.consumeEvents(ctx); err != nil {
			return false, err
		}
	}
	if receipts {
		moreReceipts, err = s.consumeReceipts(ctx)
	}
	return moreEvents || moreReceipts, err
}

// notification is one row of push_notifications about to be written.
type notification struct {
	userID    string
	event     *roomserver.Event
	thread    string
	highlight bool
	actions   []json.RawMessage
	room      *roomInfo
	flat      flatEvent
}

// readMark is a read marker about to be moved forward.
type readMark struct {
	userID, roomID, thread string
	pos                    int64
	// newest says no notification of the room is, or will be written
	// by the marker's transaction, past pos: the mark is a local
	// sender's own event in its own transaction (CountInTx), the room's
	// newest (see moveReadMark).
	newest bool
}

// consumeEvents evaluates the next batch of room events and writes the
// notifications, queued pushes and new position in one transaction.
func (s *Server) consumeEvents(ctx context.Context) (bool, error) {
	from := s.eventsPos.Load()
	var head int64
	var evs []*roomserver.Event
	var err error
	if from >= s.inTxFrom {
		// Every event above inTxFrom had its notifications written in its
		// own transaction (CountInTx); all a pass does with it is
		// copyRulesOnUpgradeJoin, which acts on joins only. Reading only
		// those, with the head in the same read, spares the JSON of every
		// message sent and a second read per pass.
		if head, evs, err = s.rooms.JoinsAfter(ctx, from, eventBatch); err != nil || head <= from {
			return false, err
		}
	} else {
		if head, err = s.rooms.StreamPosition(ctx); err != nil || head <= from {
			return false, err
		}
		if evs, err = s.rooms.EventsAfter(ctx, from, eventBatch); err != nil {
			return false, err
		}
	}
	to, more := head, false
	if len(evs) == eventBatch && evs[len(evs)-1].StreamPos < head {
		to, more = evs[len(evs)-1].StreamPos, true
	}
	var notes []notification
	var marks []readMark
	for _, ev := range evs {
		if ev.StreamPos > to {
			break
		}
		if ev.StreamPos > s.inTxFrom {
			// Counted in its own transaction (CountInTx).
			if err := s.copyRulesOnUpgradeJoin(ctx, ev); err != nil {
				return false, err
			}
			continue
		}
		n, mark, err := s.evaluateEvent(ctx, ev)
		if err != nil {
			return false, err
		}
		if err := s.copyRulesOnUpgradeJoin(ctx, ev); err != nil {
			return false, err
		}
		notes = append(notes, n...)
		if mark != nil {
			marks = append(marks, *mark)
		}
	}
	if len(notes) == 0 && len(marks) == 0 && to-s.eventsStored < lazyStoreEvents && time.Since(s.eventsStoredAt) < lazyStoreEvery {
		// Nothing to write but the position, and what a pass past
		// inTxFrom does (copyRulesOnUpgradeJoin) changes nothing when
		// repeated: store it now and then, not with every message (a
		// commit, an fsync, each).
		s.advanced(to, 0)
		return more, nil
	}
	now := s.now().UnixMilli()
	queued := false
	stored := s.eventsStored
	err = s.db.Write(ctx, func(tx storage.Tx) error {
		var err error
		if queued, err = s.writeNotifications(ctx, tx, notes, marks, now); err != nil {
			return err
		}
		return advancePosition(ctx, tx, eventsStream, stored, to)
	})
	if errors.Is(err, errMoved) {
		// Another instance advanced it: continue from what is stored.
		evPos, rcPos, lerr := s.loadPositions(ctx)
		if lerr != nil {
			return false, lerr
		}
		s.eventsStored, s.eventsStoredAt = evPos, time.Now()
		s.advanced(evPos, rcPos)
		return true, nil
	}
	if err != nil {
		return false, err
	}
	s.eventsStored, s.eventsStoredAt = to, time.Now()
	s.advanced(to, 0)
	if queued {
		s.kickSender()
	}
	return more, nil
}

// writeNotifications writes notes as push_notifications rows, adds them
// to the unread summary (push_unread), writes their push_queue rows (for
// the users' pushers as tx sees them) and moves marks, in tx; it reports
// whether anything was queued for a gateway.
func (s *Server) writeNotifications(ctx context.Context, tx storage.Tx, notes []notification, marks []readMark, now int64) (bool, error) {
	if err := lockCounts(ctx, s.db, tx); err != nil {
		return false, err
	}
	var lastID int64
	if len(notes) > 0 {
		var err error
		if lastID, err = lastNotificationID(ctx, tx); err != nil {
			return false, err
		}
	}
	if len(notes) > 0 {
		if err := s.insertNotes(ctx, tx, notes, now); err != nil {
			return false, err
		}
	}
	if len(notes) > 0 {
		if err := countNotes(ctx, tx, lastID); err != nil {
			return false, err
		}
	}
	for _, m := range marks {
		if err := moveReadMark(ctx, tx, m); err != nil {
			return false, err
		}
	}
	// Queued after the summary and the markers are final: the push's
	// counts.unread (enqueue) reads them.
	queued := false
	pushers, err := readPushersOf(ctx, tx, notes, lastID)
	if err != nil {
		return false, err
	}
	for _, n := range notes {
		q, err := s.enqueue(ctx, tx, n, now, pushers)
		if err != nil {
			return false, err
		}
		queued = queued || q
	}
	return queued, nil
}

// evaluateEvent decides who ev notifies. A local sender's own event
// also counts as their reading up to it (their client shows it read).
// Spec: client-server-api, "Server behaviour" (push): evaluate for the
// local users in the room except the sender.
func (s *Server) evaluateEvent(ctx context.Context, ev *roomserver.Event) ([]notification, *readMark, error) {
	thread := s.threadOf(ev)
	room, err := s.roomInfo(ctx, ev.RoomID)
	if err != nil {
		return nil, nil, err
	}
	if changesRoomInfo(ev) {
		// The next event sees the new members or power levels.
		delete(s.roomInfos, ev.RoomID)
	}
	return s.evaluateIn(ctx, ev, thread, room, s.rulesFor)
}

// evaluateIn decides who ev, in thread, notifies, given its room's
// members and power levels and each user's rules from rulesFor.
// Spec: client-server-api, "Server behaviour" (push): evaluate for the
// local users in the room except the sender.
func (s *Server) evaluateIn(ctx context.Context, ev *roomserver.Event, thread string, room *roomInfo,
	rulesFor func(ctx context.Context, userID string) (*compiledRules, error)) ([]notification, *readMark, error) {
	var mark *readMark
	if s.isLocal(ev.Sender) {
		mark = &readMark{userID: ev.Sender, roomID: ev.RoomID, thread: thread, pos: ev.StreamPos}
	}
	recipients := make([]string, 0, len(room.local)+1)
	for _, u := range room.local {
		if u != ev.Sender {
			recipients = append(recipients, u)
		}
	}
	// The invitee is told of their invite. Members are read when the
	// consumer gets to the event, so an invitee who has joined by then is
	// already among them: add them once, never twice.
	if ev.Type == "m.room.member" && ev.StateKey != nil && ev.Membership == "invite" &&
		*ev.StateKey != ev.Sender && s.isLocal(*ev.StateKey) && !slices.Contains(recipients, *ev.StateKey) {
		recipients = append(recipients, *ev.StateKey)
	}
	if len(recipients) == 0 {
		return nil, mark, nil
	}
	flat, err := flatten(ev.JSON)
	if err != nil {
		return nil, mark, nil // not an object: nothing can match
	}
	flat["event_id"] = ev.EventID
	flat["room_id"] = ev.RoomID
	ec := evalContext{event: flat, memberCount: room.joined, senderPower: room.power.userLevel(ev.Sender),
		notificationPower: room.power.notificationLevel}
	var out []notification
	for _, userID := range recipients {
		rules, err := rulesFor(ctx, userID)
		if err != nil {
			return nil, nil, err
		}
		ec.displayName = room.names[userID]
		var subErr error
		if thread != mainThread {
			ec.threadSubscribed = func() bool {
				if s.threadSubs == nil {
					return false
				}
				sub, err := s.threadSubs.ThreadSubscribed(ctx, userID, ev.RoomID, thread)
				subErr = err
				return sub
			}
		}
		r := rules.evaluate(&ec)
		if subErr != nil {
			return nil, nil, subErr
		}
		if r == nil || !r.outcome.notify {
			continue
		}
		out = append(out, notification{userID: userID, event: ev, thread: thread, highlight: r.outcome.highlight,
			actions: r.actions, room: room, flat: flat})
	}
	return out, mark, nil
}

// maxThreadCache bounds the event-to-thread memory (events in threads;
// threadOf does not remember those of the main timeline).
const maxThreadCache = 100000

// threadOf returns the thread ev belongs to: the root of an m.thread
// relation, or the thread of the event it relates to (reactions, edits:
// up to three hops, as the spec recommends), else the main timeline.
// Spec: client-server-api, "Marking notifications as read" (threads).
func (s *Server) threadOf(ev *roomserver.Event) string {
	thread := mainThread
	rel := gjson.GetBytes(ev.Content, `m\.relates_to`)
	switch {
	case rel.Get("rel_type").Str == "m.thread" && rel.Get("event_id").Str != "":
		thread = rel.Get("event_id").Str
	case rel.Get("event_id").Str != "":
		// The related event's own thread was resolved when it was
		// counted (it came earlier in the stream), so one lookup
		// covers the chain.
		s.threadsMu.Lock()
		if t, ok := s.threads[rel.Get("event_id").Str]; ok {
			thread = t
		}
		s.threadsMu.Unlock()
	}
	if thread == mainThread {
		// Not remembered: an event related to one the map does not
		// hold is in the main timeline anyway (above). Remembering every
		// message of the main timeline cost a map insert under the lock
		// per event on the writer, and kept up to maxThreadCache event
		// IDs alive for the collector to scan, to answer what the miss
		// answers (docs/benchmarks.md, "sendcpu2").
		return thread
	}
	s.threadsMu.Lock()
	if len(s.threads) >= maxThreadCache {
		clear(s.threads)
	}
	s.threads[ev.EventID] = thread
	s.threadsMu.Unlock()
	return thread
}

// roomInfo is what evaluation needs to know about a room, cached per
// room until a member, power-levels or create event arrives in it.
type roomInfo struct {
	local  []string          // joined local users
	joined int               // joined members, local or not
	names  map[string]string // display names of joined local users
	power  powerLevels
	name   string
	alias  string
}

func changesRoomInfo(ev *roomserver.Event) bool {
	if ev.StateKey == nil {
		return false
	}
	switch ev.Type {
	case "m.room.member", "m.room.power_levels", "m.room.create", "m.room.name", "m.room.canonical_alias":
		return true
	}
	return false
}

// maxRoomCache bounds the number of rooms kept.
const maxRoomCache = 10000

func (s *Server) roomInfo(ctx context.Context, roomID string) (*roomInfo, error) {
	if info := s.roomInfos[roomID]; info != nil {
		return info, nil
	}
	state, err := s.rooms.IndexedCurrentState(ctx, roomID, roomInfoTypes, false)
	if err != nil {
		return nil, err
	}
	info := s.roomInfoOf(state)
	if len(s.roomInfos) >= maxRoomCache {
		clear(s.roomInfos)
	}
	s.roomInfos[roomID] = info
	return info, nil
}

// roomInfoTypes are the state types roomInfoOf reads.
var roomInfoTypes = []string{"m.room.member", "m.room.power_levels", "m.room.create", "m.room.name", "m.room.canonical_alias"}

// roomInfoOf builds a room's roomInfo from its state events of
// roomInfoTypes.
func (s *Server) roomInfoOf(state []*roomserver.Event) *roomInfo {
	info := &roomInfo{names: map[string]string{}}
	var create, levels json.RawMessage
	var creator string
	for _, e := range state {
		switch e.Type {
		case "m.room.member":
			if e.Membership != "join" || e.StateKey == nil {
				continue
			}
			info.joined++
			if s.isLocal(*e.StateKey) {
				info.local = append(info.local, *e.StateKey)
				info.names[*e.StateKey] = gjson.GetBytes(e.Content, "displayname").Str
			}
		case "m.room.power_levels":
			levels = e.Content
		case "m.room.create":
			create, creator = e.Content, e.Sender
		case "m.room.name":
			info.name = gjson.GetBytes(e.Content, "name").Str
		case "m.room.canonical_alias":
			info.alias = gjson.GetBytes(e.Content, "alias").Str
		}
	}
	info.power = parsePowerLevels(levels, create, creator)
	return info
}

// powerLevels is the part of m.room.power_levels that
// sender_notification_permission reads.
type powerLevels struct {
	users         map[string]int64
	usersDefault  int64
	notifications map[string]int64
	// creators have unlimited power (room version 12's privileged
	// creators).
	creators map[string]bool
}

// parsePowerLevels reads power levels; without an m.room.power_levels
// event the creator has 100 and everyone else 0.
// Spec: client-server-api, "m.room.power_levels"; room version 12.
func parsePowerLevels(levels, create json.RawMessage, creator string) powerLevels {
	p := powerLevels{users: map[string]int64{}, notifications: map[string]int64{}, creators: map[string]bool{}}
	if gjson.GetBytes(create, "room_version").Str == "12" {
		p.creators[creator] = true
		for _, c := range gjson.GetBytes(create, "additional_creators").Array() {
			p.creators[c.Str] = true
		}
	}
	if levels == nil {
		if creator != "" {
			p.users[creator] = 100
		}
		return p
	}
	root := gjson.ParseBytes(levels)
	root.Get("users").ForEach(func(k, v gjson.Result) bool {
		if n, ok := powerInt(v); ok {
			p.users[k.Str] = n
		}
		return true
	})
	if n, ok := powerInt(root.Get("users_default")); ok {
		p.usersDefault = n
	}
	root.Get("notifications").ForEach(func(k, v gjson.Result) bool {
		if n, ok := powerInt(v); ok {
			p.notifications[k.Str] = n
		}
		return true
	})
	return p
}

// powerInt reads a power level: an integer, or (in old room versions) a
// string holding one.
func powerInt(v gjson.Result) (int64, bool) {
	switch v.Type {
	case gjson.Number:
		return v.Int(), float64(v.Int()) == v.Num
	case gjson.String:
		n, err := strconv.ParseInt(v.Str, 10, 64)
		return n, err == nil
	}
	return 0, false
}

func (p *powerLevels) userLevel(userID string) int64 {
	if p.creators[userID] {
		return math.MaxInt64
	}
	if n, ok := p.users[userID]; ok {
		return n
	}
	return p.usersDefault
}

// notificationLevel is the level needed to trigger a notification of
// kind key; 50 unless power_levels.notifications says otherwise.
func (p *powerLevels) notificationLevel(key string) int64 {
	if n, ok := p.notifications[key]; ok {
		return n
	}
	return 50
}

// consumeReceipts moves read markers for local users' receipts.
// Spec: client-server-api, "Marking notifications as read": m.read and
// m.read.private both count, and whichever is further ahead wins; a
// threaded receipt reads only its thread.
func (s *Server) consumeReceipts(ctx context.Context) (bool, error) {
	from := s.receiptsPos.Load()
	receipts, err := s.receipts.ReceiptsAfter(ctx, from, receiptBatch)
	if err != nil || len(receipts) == 0 {
		return false, err
	}
	to := receipts[len(receipts)-1].Position
	var marks []readMark
	for _, r := range receipts {
		if !s.isLocal(r.UserID) || (r.Type != "m.read" && r.Type != "m.read.private") {
			continue
		}
		ev, err := s.rooms.Event(ctx, r.UserID, r.EventID)
		if err != nil || ev.RoomID != r.RoomID {
			// Unknown, no longer visible, or an event of another room
			// (a row no check refused: an older binary's, say): reads
			// nothing. Spec: client-server-api, "Receipts".
			continue
		}
		marks = append(marks, readMark{userID: r.UserID, roomID: r.RoomID, thread: r.ThreadID, pos: ev.StreamPos})
	}
	err = s.db.Write(ctx, func(tx storage.Tx) error {
		if err := s.moveReadMarks(ctx, tx, marks); err != nil {
			return err
		}
		return advancePosition(ctx, tx, receiptsStream, from, to)
	})
	if errors.Is(err, errMoved) {
		evPos, rcPos, lerr := s.loadPositions(ctx)
		if lerr != nil {
			return false, lerr
		}
		s.advanced(evPos, rcPos)
		return true, nil
	}
	if err != nil {
		return false, err
	}
	s.advanced(0, to)
	return len(receipts) == receiptBatch, nil
}
