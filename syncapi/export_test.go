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
	req, err := s.parseSyncRequest(r)
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

// HoldSharedReads makes the lazy-loaded members reads of roomID and the
// key counts reads queue as if a read of each were under way, until
// release: the requests made meanwhile are then answered by one grouped
// read each. waiting reports how many requests have queued for each.
func (s *Server) HoldSharedReads(roomID string) (waiting func() (members, keyCounts int), release func()) {
	c, k := s.memberReads, s.keyCounts
	c.mu.Lock()
	c.byRoom[roomID] = &memberRoom{}
	c.mu.Unlock()
	k.mu.Lock()
	k.running = true
	k.mu.Unlock()
	waiting = func() (int, int) {
		c.mu.Lock()
		defer c.mu.Unlock()
		k.mu.Lock()
		defer k.mu.Unlock()
		var m, n int
		if g := c.byRoom[roomID].next; g != nil {
			m = len(g.keys)
		}
		if k.next != nil {
			n = len(k.next.devices)
		}
		return m, n
	}
	release = func() {
		c.finish(context.Background(), roomID)
		k.mu.Lock()
		next := k.next
		k.next = nil
		k.running = next != nil
		k.mu.Unlock()
		if next != nil {
			go k.read(context.Background(), next)
		}
	}
	return waiting, release
}
