package syncapi

import (
	"context"
	"errors"
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
// The grouping is groupedReads': one group at a time for all devices.
type keyCountsBatcher struct {
	e2ee  E2EEBatch
	reads groupedReads[struct{}, []DeviceRef, []DeviceKeyCounts]
}

// maxKeyCountsGroup bounds the devices of one grouped read; a request
// that finds the next group full reads alone.
const maxKeyCountsGroup = 500

// keyCounts is E2EE.KeyCounts(ctx, userID, deviceID), read together
// with the requests that ask at the same time.
func (c *keyCountsBatcher) keyCounts(ctx context.Context, userID, deviceID string) (map[string]int, []string, error) {
	dev := DeviceRef{UserID: userID, DeviceID: deviceID}
	var i int
	g, lead := c.reads.join(struct{}{}, func(g *[]DeviceRef) bool {
		if len(*g) >= maxKeyCountsGroup {
			return false
		}
		i = len(*g)
		*g = append(*g, dev)
		return true
	})
	if lead {
		// Nothing is being read: this request reads at once, alone.
		// The read outlives this request if it ends: others may join
		// the groups read after it.
		ctx = context.WithoutCancel(ctx)
		out, err := c.read(ctx, struct{}{}, &[]DeviceRef{dev})
		c.reads.finish(ctx, struct{}{}, c.read)
		if err != nil {
			return nil, nil, err
		}
		return out[0].OneTimeKeys, out[0].UnusedFallback, nil
	}
	if g == nil {
		// The next group is full.
		out, err := c.read(ctx, struct{}{}, &[]DeviceRef{dev})
		if err != nil {
			return nil, nil, err
		}
		return out[0].OneTimeKeys, out[0].UnusedFallback, nil
	}
	out, err := c.reads.wait(ctx, g)
	if err != nil {
		return nil, nil, err
	}
	return out[i].OneTimeKeys, out[i].UnusedFallback, nil
}

// read answers the devices of a group, one answer per device in order.
func (c *keyCountsBatcher) read(ctx context.Context, _ struct{}, devices *[]DeviceRef) ([]DeviceKeyCounts, error) {
	out, err := c.e2ee.KeyCountsOfDevices(ctx, *devices)
	if err == nil && len(out) != len(*devices) {
		err = errKeyCountsAnswer
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

// errKeyCountsAnswer: an E2EEBatch answered a different number of
// devices than it was asked.
var errKeyCountsAnswer = errors.New("sync: key counts: one answer per device expected")
