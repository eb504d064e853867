package syncapi

import (
	"encoding/json"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/roomserver"
)

// stateMatch is one required_state element; "*" matches anything.
type stateMatch struct{ typ, key string }

func (m stateMatch) matches(e *roomserver.Event) bool {
	return (m.typ == "*" || m.typ == e.Type) && (m.key == "*" || m.key == stateKeyOf(e))
}

// stateSelector is one room config's required_state.
type stateSelector struct {
	include, exclude []stateMatch
	lazy             bool
}

func (s stateSelector) selects(e *roomserver.Event) bool {
	for _, x := range s.exclude {
		if x.matches(e) {
			return false
		}
	}
	for _, m := range s.include {
		if m.matches(e) {
			return true
		}
	}
	return false
}

// parseRequiredState reads required_state in either form clients send:
// MSC4186's {"include": [{type, state_key}], "exclude": [...],
// "lazy_members": bool}, or the earlier [[type, state_key], ...] that
// Element X sends, where "*" is a wildcard and ["m.room.member",
// "$LAZY"] asks for lazy members. "$ME" stands for the user in both.
// Spec: MSC4186, "RequiredStateRequest".
func parseRequiredState(raw json.RawMessage, userID string) (stateSelector, error) {
	var sel stateSelector
	raw = json.RawMessage(strings.TrimSpace(string(raw)))
	me := func(k string) string {
		if k == "$ME" {
			return userID
		}
		return k
	}
	bad := mxerr.New(mxerr.InvalidParam, "required_state must be a list of [type, state_key] pairs or an object with include/exclude")
	switch {
	case len(raw) == 0 || string(raw) == "null":
		return sel, nil
	case raw[0] == '[':
		var pairs [][]string
		if err := json.Unmarshal(raw, &pairs); err != nil {
			return sel, bad
		}
		for _, p := range pairs {
			if len(p) != 2 {
				return sel, bad
			}
			if p[0] == "m.room.member" && p[1] == "$LAZY" {
				sel.lazy = true
				continue
			}
			sel.include = append(sel.include, stateMatch{p[0], me(p[1])})
		}
	case raw[0] == '{':
		type element struct {
			Type     *string `json:"type"`
			StateKey *string `json:"state_key"`
		}
		var obj struct {
			Include     []element `json:"include"`
			Exclude     []element `json:"exclude"`
			LazyMembers bool      `json:"lazy_members"`
		}
		if err := json.Unmarshal(raw, &obj); err != nil {
			return sel, bad
		}
		conv := func(els []element) []stateMatch {
			out := make([]stateMatch, 0, len(els))
			for _, e := range els {
				m := stateMatch{"*", "*"}
				if e.Type != nil {
					m.typ = *e.Type
				}
				if e.StateKey != nil {
					m.key = me(*e.StateKey)
				}
				out = append(out, m)
			}
			return out
		}
		sel.include, sel.exclude, sel.lazy = conv(obj.Include), conv(obj.Exclude), obj.LazyMembers
	default:
		return sel, bad
	}
	return sel, nil
}

// roomConfig is the combination of every rule matching one room.
// Spec: MSC4186, "Combining room configs": the largest timeline_limit
// and the union of required_state.
type roomConfig struct {
	timelineLimit int
	selectors     []stateSelector
	raw           []string // the required_state texts, for change detection
	lists         []string
}

func (c *roomConfig) add(limit int, sel stateSelector, raw json.RawMessage, list string) {
	c.timelineLimit = max(c.timelineLimit, limit)
	c.selectors = append(c.selectors, sel)
	c.raw = append(c.raw, string(raw))
	if list != "" {
		c.lists = append(c.lists, list)
	}
}

func (c *roomConfig) selects(e *roomserver.Event) bool {
	for _, s := range c.selectors {
		if s.selects(e) {
			return true
		}
	}
	return false
}

func (c *roomConfig) lazy() bool {
	for _, s := range c.selectors {
		if s.lazy {
			return true
		}
	}
	return false
}

// signature changes when the required_state asked for changes.
func (c *roomConfig) signature() string {
	raw := append([]string(nil), c.raw...)
	sort.Strings(raw)
	return strings.Join(raw, "\x00")
}

// sentRoom is what a connection has sent of one room.
type sentRoom struct {
	pos           int64 // room stream position the room was sent up to
	timelineLimit int
	stateSig      string
}

// connState is a connection's state as of one pos.
type connState struct {
	heads syncToken
	rooms map[string]sentRoom
	// threadSubs is the thread subscription stream position sent
	// (MSC4308); it is not part of the sync token.
	threadSubs int64
}

type connKey struct{ user, device, conn string }

// slidingConn is one connection: its states by pos sequence number. Only
// the latest two are kept, so a client retrying its last request works.
type slidingConn struct {
	mu     sync.Mutex
	seq    int64                // guarded by mu
	states map[int64]*connState // guarded by mu
	// used orders the connections of a device by their last request;
	// guarded by slidingConns.mu.
	used uint64
}

// maxConnsPerDevice bounds the connections (conn_ids) of one device, in
// memory and in Redis (sliding_redis.go): a client (or a stolen token)
// making up conn_ids cannot grow the store, nor push the other devices'
// connections out. Spec: MSC4186, Security considerations ("limiting
// the number of connections a device can have active"). A new
// connection past it drops the device's least recently used one, whose
// next request gets M_UNKNOWN_POS (MSC4186, Connections: a server may
// expire connections), and the client starts it again.
const maxConnsPerDevice = 10

type deviceKey struct{ user, device string }

// slidingConns holds every connection, bounded: past max the oldest
// half is dropped and those clients get M_UNKNOWN_POS and start again;
// and past maxConnsPerDevice for one device, that device's least
// recently used one.
type slidingConns struct {
	mu       sync.Mutex
	max      int
	conns    map[connKey]*slidingConn // guarded by mu
	order    []connKey                // insertion order; guarded by mu
	byDevice map[deviceKey][]string   // each device's conn_ids; guarded by mu
	tick     uint64                   // last used value given out; guarded by mu
}

func newSlidingConns(max int) *slidingConns {
	return &slidingConns{max: max, conns: map[connKey]*slidingConn{}, byDevice: map[deviceKey][]string{}}
}

// get returns the connection (nil when there is none and fresh is
// false), creating it when fresh, and marks it used.
func (c *slidingConns) get(k connKey, fresh bool) *slidingConn {
	c.mu.Lock()
	defer c.mu.Unlock()
	conn := c.conns[k]
	if conn == nil && !fresh {
		return nil
	}
	if conn == nil {
		if len(c.conns) >= c.max {
			drop := c.order[:len(c.order)/2]
			for _, old := range drop {
				delete(c.conns, old)
				c.forgetDeviceConn(old)
			}
			c.order = append([]connKey(nil), c.order[len(drop):]...)
		}
		dk := deviceKey{k.user, k.device}
		if ids := c.byDevice[dk]; len(ids) >= maxConnsPerDevice {
			lru := connKey{k.user, k.device, ids[0]}
			for _, id := range ids[1:] {
				if other := (connKey{k.user, k.device, id}); c.conns[other].used < c.conns[lru].used {
					lru = other
				}
			}
			delete(c.conns, lru)
			c.forgetDeviceConn(lru)
			c.order = slices.DeleteFunc(c.order, func(o connKey) bool { return o == lru })
		}
		conn = &slidingConn{states: map[int64]*connState{}}
		c.conns[k] = conn
		c.order = append(c.order, k)
		c.byDevice[dk] = append(c.byDevice[dk], k.conn)
	}
	c.tick++
	conn.used = c.tick
	return conn
}

// dropDevices forgets every connection of userID's devices deviceIDs
// (deleted devices, sliding_devices.go). A request of one of them in
// flight stores its state in a connection no longer held, so its pos is
// unknown.
func (c *slidingConns) dropDevices(userID string, deviceIDs ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, d := range deviceIDs {
		dk := deviceKey{userID, d}
		ids, ok := c.byDevice[dk]
		if !ok {
			continue
		}
		for _, id := range ids {
			delete(c.conns, connKey{userID, d, id})
		}
		delete(c.byDevice, dk)
		c.order = slices.DeleteFunc(c.order, func(o connKey) bool { return o.user == userID && o.device == d })
	}
}

// forgetDeviceConn removes k from its device's list; c.mu is held.
func (c *slidingConns) forgetDeviceConn(k connKey) {
	dk := deviceKey{k.user, k.device}
	ids := slices.DeleteFunc(c.byDevice[dk], func(id string) bool { return id == k.conn })
	if len(ids) == 0 {
		delete(c.byDevice, dk)
	} else {
		c.byDevice[dk] = ids
	}
}

func (conn *slidingConn) state(seq int64) *connState {
	conn.mu.Lock()
	defer conn.mu.Unlock()
	return conn.states[seq]
}

// store records the state after a response and returns its sequence
// number; states older than the one the request started from go.
func (conn *slidingConn) store(from int64, st *connState) int64 {
	conn.mu.Lock()
	defer conn.mu.Unlock()
	conn.seq++
	conn.states[conn.seq] = st
	for seq := range conn.states {
		if seq < from && seq != conn.seq {
			delete(conn.states, seq)
		}
	}
	return conn.seq
}
