package syncapi

import (
	"context"
	"errors"
	"sync"
)

// keyCountsBatcher shares the key counts reads of /sync requests made
// at the same time. Every response carries its device's one-time key
// counts (required since v1.17 whenever unclaimed keys exist;
// client-server-api, "Extensions to /sync" of end-to-end encryption),
// so one message to a room of L members costs L such reads, nearly all
// of their cost that of a read as such: at 200 listeners they were the
// largest single item of a woken response's CPU (docs/benchmarks.md,
// "Fan-out delivery, part 6"). So they are grouped as the unread
// counts are (countsBatcher): while one read runs, the requests that
// arrive join the next group, which one read answers when the first is
// done.
//
// Why it is exact: a request joins only a group whose read has not
// started, so the read it gets begins after it asked, as fresh as the
// request's own read would have been at that moment; E2EEBatch answers
// each device as KeyCounts does (that device's keys only).
//
// Concurrency: guarded by mu; a group's fields are set before its done
// is closed and never written after.
type keyCountsBatcher struct {
	e2ee E2EEBatch
	mu   sync.Mutex
	// running: a group's read is under way; guarded by mu.
	running bool
	// next collects the requests that wait for the running read to end;
	// guarded by mu.
	next *keyCountsGroup
}

// keyCountsGroup is the requests one read answers.
type keyCountsGroup struct {
	devices []DeviceRef
	done    chan struct{} // closed once out and err are set
	out     []DeviceKeyCounts
	err     error
}

// maxKeyCountsGroup bounds the devices of one grouped read; a request
// that finds the next group full reads alone.
const maxKeyCountsGroup = 500

// keyCounts is E2EE.KeyCounts(ctx, userID, deviceID), read together
// with the requests that ask at the same time.
func (c *keyCountsBatcher) keyCounts(ctx context.Context, userID, deviceID string) (map[string]int, []string, error) {
	dev := DeviceRef{UserID: userID, DeviceID: deviceID}
	c.mu.Lock()
	var g *keyCountsGroup
	lead := !c.running
	if lead {
		// Nothing is being read: this request reads at once, alone.
		c.running = true
		g = &keyCountsGroup{done: make(chan struct{})}
	} else {
		if c.next == nil {
			c.next = &keyCountsGroup{done: make(chan struct{})}
		}
		g = c.next
		if len(g.devices) >= maxKeyCountsGroup {
			c.mu.Unlock()
			return c.readAlone(ctx, dev)
		}
	}
	i := len(g.devices)
	g.devices = append(g.devices, dev)
	c.mu.Unlock()
	if lead {
		// The read outlives this request if it ends: others may join
		// the groups read after it.
		c.read(context.WithoutCancel(ctx), g)
	}
	select {
	case <-g.done:
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
	if g.err != nil {
		return nil, nil, g.err
	}
	return g.out[i].OneTimeKeys, g.out[i].UnusedFallback, nil
}

func (c *keyCountsBatcher) readAlone(ctx context.Context, dev DeviceRef) (map[string]int, []string, error) {
	out, err := c.e2ee.KeyCountsOfDevices(ctx, []DeviceRef{dev})
	if err == nil && len(out) != 1 {
		err = errKeyCountsAnswer
	}
	if err != nil {
		return nil, nil, err
	}
	return out[0].OneTimeKeys, out[0].UnusedFallback, nil
}

// read answers g, then starts the read of the group that collected
// meanwhile, if any, on its own goroutine (so g's members are not kept
// waiting for it).
func (c *keyCountsBatcher) read(ctx context.Context, g *keyCountsGroup) {
	g.out, g.err = c.e2ee.KeyCountsOfDevices(ctx, g.devices)
	if g.err == nil && len(g.out) != len(g.devices) {
		g.err = errKeyCountsAnswer
	}
	close(g.done)
	c.mu.Lock()
	next := c.next
	c.next = nil
	c.running = next != nil
	c.mu.Unlock()
	if next != nil {
		go c.read(ctx, next)
	}
}

// errKeyCountsAnswer: an E2EEBatch answered a different number of
// devices than it was asked.
var errKeyCountsAnswer = errors.New("sync: key counts: one answer per device expected")
