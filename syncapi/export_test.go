package syncapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/myelin-chat/myelin/internal/authn"
)

// Waiting is the number of long-polling requests registered with the
// waker, so tests can act once a request is waiting.
func (s *Server) Waiting() int {
	s.waker.mu.Lock()
	defer s.waker.mu.Unlock()
	return len(s.waker.all)
}

// ZeroSharedHeads makes the shared heads cache hold all-zero heads for
// the current notification generation, as if its entry had been read
// just before every write so far: tests use it to show that a token
// ahead of the cached heads is still accepted.
func (s *Server) ZeroSharedHeads() {
	c := s.sharedHeads
	if c.n == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen, c.at, c.heads, c.seen = c.n.Changed(), time.Now(), syncToken{}, c.n.Positions()
}

// NewsOf is newsOf: the rooms (and whether any state event) of the
// events the waker read.
var NewsOf = newsOf

// SyncJSON computes the response of GET /sync?query for the user's
// device, as the handler would but without waiting, at the fixed time
// now (events' unsigned.age), and returns its JSON. perRoom makes a sync
// that sends rooms whole read each room on its own rather than all at
// once: the reference the batched reads are compared with.
func (s *Server) SyncJSON(ctx context.Context, userID, deviceID, query string, now time.Time, perRoom bool) ([]byte, error) {
	r := httptest.NewRequest(http.MethodGet, "/_matrix/client/v3/sync?"+query, nil)
	r = r.WithContext(authn.WithDevice(ctx, &authn.Device{UserID: userID, DeviceID: deviceID}))
	req, err := s.parseSyncRequest(r, r.URL.Query())
	if err != nil {
		return nil, err
	}
	req.perRoom = perRoom
	saved := s.now
	s.now = func() time.Time { return now }
	defer func() { s.now = saved }()
	resp, err := s.compute(ctx, req)
	if err != nil {
		return nil, err
	}
	body, err := json.Marshal(resp)
	if err != nil {
		return nil, err
	}
	// What the handler writes for any other sync is appendResponse's:
	// it must be these very bytes too.
	if fast, err := appendResponse(nil, resp); err != nil || !bytes.Equal(fast, body) {
		return nil, fmt.Errorf("appendResponse differs from json.Marshal (%v):\n%s\n%s", err, fast, body)
	}
	// What the handler writes for a sync that sends rooms whole is
	// marshalSync's: it must be these very bytes.
	if (req.since == nil || req.fullState) && (req.filter == nil || req.filter.EventFormat != "federation") {
		fast, err := marshalSync(resp)
		if err != nil {
			return nil, err
		}
		if !bytes.Equal(fast, body) {
			return nil, fmt.Errorf("marshalSync differs from json.Marshal:\n%s\n%s", fast, body)
		}
		// Allocated once at the size syncBody computed (the
		// Content-Length the handler sends): it must be exact.
		if cap(fast) != len(fast) {
			return nil, fmt.Errorf("syncBody's size is %d, its body %d bytes", cap(fast), len(fast))
		}
	}
	return body, nil
}

// SplitTimelines makes an initial sync read its timelines in concurrent
// parts of n rooms each (0: the default).
func (s *Server) SplitTimelines(n int) { s.timelineSplit = n }

// HoldSharedReads makes the lazy-loaded members reads and the timeline
// reads of roomID and the key counts reads queue as if a read of each
// were under way, until release: the requests made meanwhile are then
// answered by one grouped read each. waiting reports how many requests
// have queued for each. releaseTimelines ends the timelines' hold alone
// (a request reads its lazy-loaded members once it has its timeline);
// release ends the other two.
func (s *Server) HoldSharedReads(roomID string) (waiting func() (members, keyCounts, timelines int), releaseTimelines, release func()) {
	c, k, tl := s.memberReads, s.keyCounts, s.timelines
	c.reads.hold(roomID)
	k.reads.hold(struct{}{})
	tl.reads.hold(roomID)
	waiting = func() (int, int, int) {
		var m, n, t int
		c.reads.inspect(roomID, func(_ bool, next *memberKeys) {
			if next != nil {
				m = len(next.keys)
			}
		})
		k.reads.inspect(struct{}{}, func(_ bool, next *[]DeviceRef) {
			if next != nil {
				n = len(*next)
			}
		})
		tl.reads.inspect(roomID, func(_ bool, next *timelineGroup) {
			if next != nil {
				t = len(next.users)
			}
		})
		return m, n, t
	}
	releaseTimelines = func() { tl.reads.finish(context.Background(), roomID, tl.read) }
	release = func() {
		c.reads.finish(context.Background(), roomID, c.read)
		k.reads.finish(context.Background(), struct{}{}, k.read)
	}
	return waiting, releaseTimelines, release
}

// hold makes key's requests queue as if a read of key were under way,
// until finish.
func (r *groupedReads[K, G, A]) hold(key K) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.byKey == nil {
		r.byKey = map[K]*readGroup[G, A]{}
	}
	r.byKey[key] = nil
}

// inspect calls f, under r's lock, with whether a read of key is under
// way and the queries of the group waiting behind it (nil if none).
func (r *groupedReads[K, G, A]) inspect(key K, f func(running bool, next *G)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	g, running := r.byKey[key]
	if g == nil {
		f(running, nil)
		return
	}
	f(running, &g.q)
}

// DropMembershipsMemo empties the memberships memo (membershipmemo.go):
// the next memberships read of every user goes to the database.
func (s *Server) DropMembershipsMemo() {
	m := s.waker.memo
	m.mu.Lock()
	defer m.mu.Unlock()
	m.dropAll()
}

// MembershipsMemoized reports whether the memberships memo holds an
// entry for userID.
func (s *Server) MembershipsMemoized(userID string) bool {
	m := s.waker.memo
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.byUser[userID]
	return ok
}

// HoldMemberships makes the users' memberships reads queue as if a read
// were under way, until release: the requests made meanwhile are then
// answered by one grouped read. waiting reports how many users queued.
func (s *Server) HoldMemberships() (waiting func() int, release func()) {
	m := s.memberships
	m.reads.hold(struct{}{})
	waiting = func() int {
		var n int
		m.reads.inspect(struct{}{}, func(_ bool, next *membershipUsers) {
			if next != nil {
				n = len(next.ids)
			}
		})
		return n
	}
	release = func() { m.reads.finish(context.Background(), struct{}{}, m.read) }
	return waiting, release
}

// SlidingConnsHeld counts the connections conns of userID's device
// deviceID that the store holds: in memory, or in Redis (their hashes).
func (s *Server) SlidingConnsHeld(ctx context.Context, userID, deviceID string, conns ...string) (int, error) {
	n := 0
	for _, conn := range conns {
		k := connKey{userID, deviceID, conn}
		if s.slidingRedis != nil {
			found, err := s.slidingRedis.client.Exists(ctx, s.slidingRedis.key(k)).Result()
			if err != nil {
				return 0, err
			}
			n += int(found)
			continue
		}
		s.sliding.mu.Lock()
		if s.sliding.conns[k] != nil {
			n++
		}
		s.sliding.mu.Unlock()
	}
	return n, nil
}
