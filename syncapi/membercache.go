package syncapi

import "sync"

// memberCache remembers which membership events each device was sent per
// room, so lazy-loading syncs can leave out redundant ones. It is only
// an optimisation: when it forgets (it is bounded, and not persisted),
// redundant members are sent again, which the spec allows.
type memberCache struct {
	mu      sync.Mutex
	max     int
	entries int
	sentTo  map[string]map[string]string // device|room key -> member -> event ID; guarded by mu
}

func newMemberCache(max int) *memberCache {
	return &memberCache{max: max, sentTo: map[string]map[string]string{}}
}

func (c *memberCache) sent(key, member, eventID string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sentTo[key][member] == eventID
}

func (c *memberCache) remember(key, member, eventID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries >= c.max {
		c.sentTo, c.entries = map[string]map[string]string{}, 0
	}
	m := c.sentTo[key]
	if m == nil {
		m = map[string]string{}
		c.sentTo[key] = m
	}
	if _, ok := m[member]; !ok {
		c.entries++
	}
	m[member] = eventID
}
