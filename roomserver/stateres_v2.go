package roomserver

import (
	"container/heap"
	"encoding/json"
	"fmt"
	"math"
	"sort"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// State resolution v2 (room versions 2–11) and v2.1 (room version 12),
// written from the spec text: rooms/v2 "State resolution" (the shared
// fragment rooms/fragments/v2-state-res.md) and rooms/v12 "State
// resolution". gomatrixserverlib is used only for the per-event
// authorisation rules (gomatrixserverlib.Allowed), behind guard.
//
// We do not use gomatrixserverlib.ResolveStateConflictsV2New: at the
// pinned version its v2.1 path panics in every v12 room with a conflicted
// power event (the power-level tie-break reads a "resolved create event"
// that v2.1, starting from an empty state, has not resolved yet), would
// then auth v12 events without their create event (which is no longer in
// auth_events), and prints event IDs to stdout. Its v2 also departs from
// the spec where TestResolveStateV2MatchesGomatrixserverlib finds
// differences: when the state lacks a key the auth rules need, it adds
// the event being checked instead of the auth event; it breaks mainline
// ties by step count; it enlarges the power events only through
// conflicted events; and its Kahn's algorithm runs from the latest
// events, which is not always the lexicographically smallest order.
//
// Room version 12 specifics (MSC4291, MSC4289): the create event is not
// in any event's auth_events; it is implied by the room ID (the room ID is
// the create event's ID with the sigil "!"). Wherever the algorithm looks
// at "an event's auth_events" for the create event, the create event named
// by the event's room ID is used. Room creators (the create event's sender
// and content.additional_creators) have infinite power level.

// stateResV2 holds the inputs and memoised lookups of one resolution.
type stateResV2 struct {
	version string
	// v21 selects state resolution v2.1 (room version 12).
	v21 bool
	// privilegedCreators: creators have infinite power (room version 12).
	privilegedCreators bool
	// events holds every state event of the state sets and every event
	// of their auth chains, by event ID.
	events map[string]gomatrixserverlib.PDU
	// rejected reports whether an event was rejected.
	rejected func(eventID string) bool

	plContent map[string]*gomatrixserverlib.PowerLevelContent
	authChain map[string]map[string]struct{}
	// Diagnostics for the differential test against gomatrixserverlib,
	// which differs from the spec in two places: fallbacks counts auth
	// events taken from an event's auth_events because the state lacked
	// them (gomatrixserverlib adds the event being checked instead);
	// stepTies counts mainline-position ties between events that reach
	// the mainline in different numbers of steps (gomatrixserverlib
	// breaks those by step count, the spec by origin_server_ts);
	// pulledIn counts events added to step 1's set from power events'
	// auth chains that are not in the conflicted state set
	// (gomatrixserverlib only follows conflicted events there).
	fallbacks, stepTies, pulledIn int
	// powerOrder is step 1's sorted list, kept for the same test.
	powerOrder []string
}

// infinitePower is a room creator's power level in room version 12,
// greater than any power level an m.room.power_levels event can hold
// (those are limited to 2^53-1 by canonical JSON).
const infinitePower = math.MaxInt64

// resolveStateV2 resolves the state sets (each a map of (type, state_key)
// to event ID) with state resolution v2, or v2.1 when the room version
// says so. events must hold every event named in sets and should hold
// their auth chains (missing auth events are skipped). It returns the
// resolved state as (type, state_key) -> event ID.
func resolveStateV2(version string, sets []map[tuple]string, events map[string]gomatrixserverlib.PDU, rejected func(string) bool) (map[tuple]string, error) {
	r, err := newStateResV2(version, events, rejected)
	if err != nil {
		return nil, err
	}
	for _, set := range sets {
		for k, id := range set {
			if _, ok := events[id]; !ok {
				return nil, fmt.Errorf("state resolution: state event %s (%s, %q) not given", id, k.Type, k.StateKey)
			}
		}
	}
	return r.resolve(sets), nil
}

func newStateResV2(version string, events map[string]gomatrixserverlib.PDU, rejected func(string) bool) (*stateResV2, error) {
	impl, err := roomVersion(version)
	if err != nil {
		return nil, err
	}
	switch impl.StateResAlgorithm() {
	case gomatrixserverlib.StateResV2, gomatrixserverlib.StateResV2_1:
	default:
		return nil, fmt.Errorf("room version %s does not use state resolution v2", version)
	}
	if rejected == nil {
		rejected = func(string) bool { return false }
	}
	return &stateResV2{
		version:            version,
		v21:                impl.StateResAlgorithm() == gomatrixserverlib.StateResV2_1,
		privilegedCreators: impl.PrivilegedCreators(),
		events:             events,
		rejected:           rejected,
		plContent:          map[string]*gomatrixserverlib.PowerLevelContent{},
		authChain:          map[string]map[string]struct{}{},
	}, nil
}

func (r *stateResV2) resolve(sets []map[tuple]string) map[tuple]string {
	if len(sets) == 0 {
		return map[tuple]string{}
	}

	// Unconflicted state map and conflicted state set.
	unconflicted := map[tuple]string{}
	conflicted := map[string]struct{}{}
	keys := map[tuple]struct{}{}
	for _, set := range sets {
		for k := range set {
			keys[k] = struct{}{}
		}
	}
	for k := range keys {
		v, same := sets[0][k]
		for _, set := range sets[1:] {
			if w, ok := set[k]; !ok || w != v {
				same = false
				break
			}
		}
		if same {
			unconflicted[k] = v
			continue
		}
		for _, set := range sets {
			if w, ok := set[k]; ok {
				conflicted[w] = struct{}{}
			}
		}
	}
	if len(conflicted) == 0 {
		return unconflicted
	}

	// Full conflicted set: the conflicted state set, the auth difference
	// and (v2.1) the conflicted state subgraph.
	full := map[string]struct{}{}
	for id := range conflicted {
		full[id] = struct{}{}
	}
	for id := range r.authDifference(sets) {
		full[id] = struct{}{}
	}
	if r.v21 {
		for id := range r.conflictedSubgraph(conflicted) {
			full[id] = struct{}{}
		}
	}

	// Step 1: the power events of the full conflicted set, with the
	// events of their auth chains that are in the full conflicted set,
	// in reverse topological power ordering.
	x := map[string]struct{}{}
	for id := range full {
		if isPowerEvent(r.events[id]) {
			x[id] = struct{}{}
			for a := range r.chain(id) {
				if _, ok := full[a]; ok {
					x[a] = struct{}{}
					if _, c := conflicted[a]; !c && !isPowerEvent(r.events[a]) {
						r.pulledIn++
					} else if _, c := conflicted[id]; !c {
						r.pulledIn++
					}
				}
			}
		}
	}
	powerOrder := r.reverseTopologicalPowerOrder(x)
	r.powerOrder = powerOrder

	// Step 2: iterative auth checks from the unconflicted state map (v2)
	// or from an empty state map (v2.1).
	partial := map[tuple]string{}
	if !r.v21 {
		for k, v := range unconflicted {
			partial[k] = v
		}
	}
	r.iterativeAuthChecks(partial, powerOrder)

	// Step 3: the remaining events in mainline order based on the power
	// levels of the partially resolved state.
	var rest []string
	for id := range full {
		if _, ok := x[id]; !ok {
			rest = append(rest, id)
		}
	}
	rest = r.mainlineOrder(rest, partial[tuple{"m.room.power_levels", ""}])

	// Step 4: iterative auth checks on the partially resolved state.
	r.iterativeAuthChecks(partial, rest)

	// Step 5: the unconflicted state map wins.
	for k, v := range unconflicted {
		partial[k] = v
	}
	return partial
}

// chain returns the auth chain of an event: its auth events, theirs, and
// so on (not the event itself). Auth events not given are skipped.
func (r *stateResV2) chain(id string) map[string]struct{} {
	if c, ok := r.authChain[id]; ok {
		return c
	}
	c := map[string]struct{}{}
	stack := []string{id}
	for len(stack) > 0 {
		cur := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		ev, ok := r.events[cur]
		if !ok {
			continue
		}
		for _, a := range ev.AuthEventIDs() {
			if _, seen := c[a]; seen {
				continue
			}
			if _, ok := r.events[a]; !ok {
				continue
			}
			c[a] = struct{}{}
			if known, ok := r.authChain[a]; ok {
				for b := range known {
					c[b] = struct{}{}
				}
				continue
			}
			stack = append(stack, a)
		}
	}
	r.authChain[id] = c
	return c
}

// authDifference is ∪ C_i − ∩ C_i where C_i is the union of the auth
// chains of the events in state set i.
func (r *stateResV2) authDifference(sets []map[tuple]string) map[string]struct{} {
	count := map[string]int{}
	for _, set := range sets {
		full := map[string]struct{}{}
		for _, id := range set {
			for a := range r.chain(id) {
				full[a] = struct{}{}
			}
		}
		for a := range full {
			count[a]++
		}
	}
	diff := map[string]struct{}{}
	for a, n := range count {
		if n < len(sets) {
			diff[a] = struct{}{}
		}
	}
	return diff
}

// conflictedSubgraph is the union of all auth_events paths between
// events of the conflicted state set, endpoints included: the events
// reachable from a conflicted event from which a conflicted event is
// reachable.
func (r *stateResV2) conflictedSubgraph(conflicted map[string]struct{}) map[string]struct{} {
	reachable := map[string]struct{}{}
	for id := range conflicted {
		for a := range r.chain(id) {
			reachable[a] = struct{}{}
		}
	}
	// leadsToConflicted memoises whether a conflicted event is reachable
	// from an event through one or more auth_events edges.
	leads := map[string]bool{}
	var leadsToConflicted func(id string) bool
	leadsToConflicted = func(id string) bool {
		if v, ok := leads[id]; ok {
			return v
		}
		leads[id] = false
		ev, ok := r.events[id]
		if !ok {
			return false
		}
		for _, a := range ev.AuthEventIDs() {
			if _, ok := r.events[a]; !ok {
				continue
			}
			if _, c := conflicted[a]; c || leadsToConflicted(a) {
				leads[id] = true
				return true
			}
		}
		return false
	}
	out := map[string]struct{}{}
	for id := range reachable {
		if _, c := conflicted[id]; c || leadsToConflicted(id) {
			out[id] = struct{}{}
		}
	}
	for id := range conflicted {
		if leadsToConflicted(id) {
			out[id] = struct{}{} // the start of a path
		}
	}
	return out
}

// isPowerEvent: m.room.power_levels, m.room.join_rules, or an
// m.room.member leave or ban whose sender is not its state_key.
func isPowerEvent(ev gomatrixserverlib.PDU) bool {
	if ev == nil || ev.StateKey() == nil {
		return false
	}
	switch ev.Type() {
	case "m.room.power_levels", "m.room.join_rules":
		return ev.StateKeyEquals("")
	case "m.room.member":
		if ev.StateKeyEquals(string(ev.SenderID())) {
			return false
		}
		var c struct {
			Membership string `json:"membership"`
		}
		if json.Unmarshal(ev.Content(), &c) != nil {
			return false
		}
		return c.Membership == "leave" || c.Membership == "ban"
	}
	return false
}

// authEventOfType returns the event in ev's auth_events with the given
// type and state key, or nil. For the create event in room version 12,
// it is the event the room ID names.
func (r *stateResV2) authEventOfType(ev gomatrixserverlib.PDU, typ, stateKey string) gomatrixserverlib.PDU {
	for _, id := range ev.AuthEventIDs() {
		a, ok := r.events[id]
		if ok && a.Type() == typ && a.StateKeyEquals(stateKey) {
			return a
		}
	}
	if typ == "m.room.create" && stateKey == "" && r.privilegedCreators {
		return r.createFromRoomID(ev)
	}
	return nil
}

// createFromRoomID returns the create event named by ev's room ID (room
// version 12: the room ID is the create event's ID with "!" for "$").
func (r *stateResV2) createFromRoomID(ev gomatrixserverlib.PDU) gomatrixserverlib.PDU {
	if isCreate(ev) {
		return ev
	}
	roomID := ev.RoomID().String()
	if len(roomID) < 2 || roomID[0] != '!' {
		return nil
	}
	c, ok := r.events["$"+roomID[1:]]
	if !ok || !isCreate(c) {
		return nil
	}
	return c
}

// senderPower is the power level of ev's sender according to ev's
// auth_events, as the auth rules define it: a room creator's level is
// infinite (v12); otherwise users[sender] or users_default of the
// m.room.power_levels auth event; without one, 100 for the room creator
// (before v12) and 0 for everyone else.
func (r *stateResV2) senderPower(ev gomatrixserverlib.PDU) int64 {
	sender := string(ev.SenderID())
	create := r.authEventOfType(ev, "m.room.create", "")
	if r.privilegedCreators && create != nil {
		for _, c := range creators(create) {
			if c == sender {
				return infinitePower
			}
		}
	}
	if pl := r.authEventOfType(ev, "m.room.power_levels", ""); pl != nil {
		content, ok := r.plContent[pl.EventID()]
		if !ok {
			parsed, err := gomatrixserverlib.NewPowerLevelContentFromEvent(pl)
			if err == nil {
				content = &parsed
			}
			r.plContent[pl.EventID()] = content
		}
		if content == nil {
			return 0
		}
		return content.UserLevel(spec.SenderID(sender))
	}
	if !r.privilegedCreators && create != nil && creatorBeforeV12(r.version, create) == sender {
		return 100
	}
	return 0
}

// creators lists a v12 create event's sender and additional_creators.
func creators(create gomatrixserverlib.PDU) []string {
	out := []string{string(create.SenderID())}
	var c struct {
		AdditionalCreators []any `json:"additional_creators"`
	}
	if json.Unmarshal(create.Content(), &c) == nil {
		for _, a := range c.AdditionalCreators {
			if s, ok := a.(string); ok {
				out = append(out, s)
			}
		}
	}
	return out
}

// creatorBeforeV12 is "the room creator": content.creator in room
// versions 1–10, the create event's sender from room version 11.
func creatorBeforeV12(version string, create gomatrixserverlib.PDU) string {
	if version != "11" {
		var c struct {
			Creator string `json:"creator"`
		}
		if json.Unmarshal(create.Content(), &c) == nil && c.Creator != "" {
			return c.Creator
		}
	}
	return string(create.SenderID())
}

// powerItem is an event in the reverse topological power ordering.
type powerItem struct {
	id    string
	power int64
	ts    spec.Timestamp
}

// powerLess is the spec's comparison: greater sender power level first,
// then smaller origin_server_ts, then smaller event ID.
func powerLess(x, y powerItem) bool {
	if x.power != y.power {
		return x.power > y.power
	}
	if x.ts != y.ts {
		return x.ts < y.ts
	}
	return x.id < y.id
}

type powerHeap []powerItem

func (h powerHeap) Len() int           { return len(h) }
func (h powerHeap) Less(i, j int) bool { return powerLess(h[i], h[j]) }
func (h powerHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *powerHeap) Push(v any)        { *h = append(*h, v.(powerItem)) }
func (h *powerHeap) Pop() any {
	old := *h
	v := old[len(old)-1]
	*h = old[:len(old)-1]
	return v
}

// reverseTopologicalPowerOrder sorts set with Kahn's algorithm on the DAG
// of auth_events within set (auth events first), taking at each step the
// smallest candidate by powerLess.
func (r *stateResV2) reverseTopologicalPowerOrder(set map[string]struct{}) []string {
	// waiting[id]: auth events of id in set not yet output.
	waiting := map[string]int{}
	dependents := map[string][]string{}
	for id := range set {
		seen := map[string]bool{}
		for _, a := range r.events[id].AuthEventIDs() {
			if _, ok := set[a]; ok && !seen[a] {
				seen[a] = true
				waiting[id]++
				dependents[a] = append(dependents[a], id)
			}
		}
	}
	item := func(id string) powerItem {
		ev := r.events[id]
		return powerItem{id: id, power: r.senderPower(ev), ts: ev.OriginServerTS()}
	}
	h := &powerHeap{}
	for id := range set {
		if waiting[id] == 0 {
			*h = append(*h, item(id))
		}
	}
	heap.Init(h)
	out := make([]string, 0, len(set))
	for h.Len() > 0 {
		next := heap.Pop(h).(powerItem)
		out = append(out, next.id)
		for _, d := range dependents[next.id] {
			waiting[d]--
			if waiting[d] == 0 {
				heap.Push(h, item(d))
			}
		}
	}
	return out
}

// mainlineOrder sorts ids by the mainline ordering based on the power
// levels event pl (none: every mainline position is ∞): greater mainline
// position first, then smaller origin_server_ts, then smaller event ID.
func (r *stateResV2) mainlineOrder(ids []string, pl string) []string {
	// Mainline of P0: P0, the power levels event in its auth_events, ...
	mainline := map[string]int{}
	for cur := r.events[pl]; cur != nil; {
		if _, loop := mainline[cur.EventID()]; loop {
			break
		}
		mainline[cur.EventID()] = len(mainline)
		cur = r.authEventOfType(cur, "m.room.power_levels", "")
	}
	const inf = math.MaxInt
	// position returns the mainline position of ev and the index j of
	// the first e_j in the mainline.
	position := func(ev gomatrixserverlib.PDU) (int, int) {
		seen := map[string]bool{}
		j := 1
		for e := r.authEventOfType(ev, "m.room.power_levels", ""); e != nil; e = r.authEventOfType(e, "m.room.power_levels", "") {
			if i, ok := mainline[e.EventID()]; ok {
				return i, j
			}
			if seen[e.EventID()] {
				break
			}
			seen[e.EventID()] = true
			j++
		}
		return inf, 0
	}
	type item struct {
		id  string
		pos int
		ts  spec.Timestamp
	}
	items := make([]item, len(ids))
	stepsAt := map[int]int{}
	for i, id := range ids {
		ev := r.events[id]
		pos, j := position(ev)
		items[i] = item{id: id, pos: pos, ts: ev.OriginServerTS()}
		if pos == inf {
			continue
		}
		if s, ok := stepsAt[pos]; ok && s != j {
			r.stepTies++
		}
		stepsAt[pos] = j
	}
	sort.Slice(items, func(i, j int) bool {
		x, y := items[i], items[j]
		if x.pos != y.pos {
			return x.pos > y.pos
		}
		if x.ts != y.ts {
			return x.ts < y.ts
		}
		return x.id < y.id
	})
	out := make([]string, len(items))
	for i, it := range items {
		out[i] = it.id
	}
	return out
}

// iterativeAuthChecks applies each event of ids, in order, to state if
// the auth rules allow it against state; a key the rules need that state
// lacks is taken from the event's auth_events, unless that auth event was
// rejected (v12: a missing create event is the one the room ID names).
func (r *stateResV2) iterativeAuthChecks(state map[tuple]string, ids []string) {
	for _, id := range ids {
		ev := r.events[id]
		if ev == nil || ev.StateKey() == nil {
			continue
		}
		var authEvents []gomatrixserverlib.PDU
		for _, k := range neededTuples(ev) {
			if sid, ok := state[k]; ok {
				if a := r.events[sid]; a != nil {
					authEvents = append(authEvents, a)
				}
				continue
			}
			a := r.authEventOfType(ev, k.Type, k.StateKey)
			if a == nil || r.rejected(a.EventID()) {
				continue
			}
			r.fallbacks++
			authEvents = append(authEvents, a)
		}
		if allowed(ev, authEvents) != nil {
			continue
		}
		state[tuple{ev.Type(), *ev.StateKey()}] = id
	}
}
