package roomserver

import (
	"context"
	"fmt"
	"maps"
	"sort"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/storage"
)

// resolveStates resolves several state sets into one with the room
// version's algorithm: v1 (gomatrixserverlib, guarded); v2 and, for
// room version 12, v2.1 (resolveStateV2, ours).
// Spec: rooms/v1, rooms/v2 and rooms/v12, "State resolution".
//
// gomatrixserverlib panics when given fewer than two sets, so sets are
// deduplicated first; every state and auth-chain event is passed in.
func (s *Server) resolveStates(ctx context.Context, q storage.Querier, tx storage.Tx, version string, sets []stateMap) (stateMap, error) {
	var uniq []stateMap
	for _, set := range sets {
		dup := false
		for _, u := range uniq {
			if maps.Equal(u, set) {
				dup = true
				break
			}
		}
		if !dup {
			uniq = append(uniq, set)
		}
	}
	if len(uniq) == 0 {
		return stateMap{}, nil
	}
	if len(uniq) == 1 {
		return maps.Clone(uniq[0]), nil
	}

	nidSet := map[int64]bool{}
	for _, set := range uniq {
		for _, nid := range set {
			nidSet[nid] = true
		}
	}
	nids := make([]int64, 0, len(nidSet))
	for nid := range nidSet {
		nids = append(nids, nid)
	}
	sort.Slice(nids, func(i, j int) bool { return nids[i] < nids[j] })
	stateEvents, err := s.loadEvents(ctx, q, tx, version, nids)
	if err != nil {
		return nil, err
	}
	byNID := make(map[int64]*loadedEvent, len(stateEvents))
	for _, e := range stateEvents {
		byNID[e.row.NID] = e
	}
	chain, err := s.authChain(ctx, q, tx, stateEvents)
	if err != nil {
		return nil, err
	}
	rejected := map[string]bool{}
	for _, e := range chain {
		rejected[e.row.EventID] = e.row.Rejected
	}
	isRejected := func(id string) bool { return rejected[id] }
	impl, err := roomVersion(version)
	if err != nil {
		return nil, err
	}
	var resolved []gomatrixserverlib.PDU
	switch impl.StateResAlgorithm() {
	case gomatrixserverlib.StateResV2, gomatrixserverlib.StateResV2_1:
		// Our own v2 / v2.1 (stateres_v2.go): gomatrixserverlib's panics
		// on v12 rooms and prints to stdout.
		events := make(map[string]gomatrixserverlib.PDU, len(chain))
		for _, e := range chain {
			events[e.row.EventID] = e.pdu
		}
		idSets := make([]map[tuple]string, len(uniq))
		for i, set := range uniq {
			idSets[i] = make(map[tuple]string, len(set))
			for k, nid := range set {
				idSets[i][k] = byNID[nid].row.EventID
			}
		}
		ids, err := resolveStateV2(version, idSets, events, isRejected)
		if err != nil {
			return nil, err
		}
		for _, id := range ids {
			resolved = append(resolved, events[id])
		}
	default:
		pduSets := make([][]gomatrixserverlib.PDU, len(uniq))
		for i, set := range uniq {
			for _, k := range sortedTuples(set) {
				pduSets[i] = append(pduSets[i], byNID[set[k]].pdu)
			}
		}
		authPDUs := make([]gomatrixserverlib.PDU, 0, len(chain))
		for _, e := range chain {
			authPDUs = append(authPDUs, e.pdu)
		}
		resolved, err = guard("state resolution", func() ([]gomatrixserverlib.PDU, error) {
			return gomatrixserverlib.ResolveConflictsNew(gomatrixserverlib.RoomVersion(version), pduSets, authPDUs, userIDForSender, isRejected)
		})
		if err != nil {
			return nil, err
		}
	}
	byID := make(map[string]int64, len(chain))
	for _, e := range chain {
		byID[e.row.EventID] = e.row.NID
	}
	out := stateMap{}
	for _, pdu := range resolved {
		if pdu == nil || pdu.StateKey() == nil {
			continue
		}
		nid, ok := byID[pdu.EventID()]
		if !ok {
			return nil, fmt.Errorf("state resolution returned unknown event %s", pdu.EventID())
		}
		if rejected[pdu.EventID()] {
			// Security case 20: rejected events never re-enter state.
			continue
		}
		out[tuple{pdu.Type(), *pdu.StateKey()}] = nid
	}
	return out, nil
}

// authChain returns events and every event reachable from them through
// auth_events, each once, in a stable order.
func (s *Server) authChain(ctx context.Context, q storage.Querier, tx storage.Tx, events []*loadedEvent) ([]*loadedEvent, error) {
	seen := map[string]*loadedEvent{}
	var order []*loadedEvent
	var frontier []string
	for _, e := range events {
		if _, ok := seen[e.row.EventID]; !ok {
			seen[e.row.EventID] = e
			order = append(order, e)
			frontier = append(frontier, e.pdu.AuthEventIDs()...)
		}
	}
	for len(frontier) > 0 {
		var want []string
		for _, id := range frontier {
			if _, ok := seen[id]; !ok && !contains(want, id) {
				want = append(want, id)
			}
		}
		frontier = nil
		if len(want) == 0 {
			break
		}
		got, err := s.loadEventsByID(ctx, q, tx, want)
		if err != nil {
			return nil, err
		}
		for _, id := range want {
			e, ok := got[id]
			if !ok {
				continue // missing auth events are the federation layer's to fetch
			}
			seen[id] = e
			order = append(order, e)
			frontier = append(frontier, e.pdu.AuthEventIDs()...)
		}
	}
	return order, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
