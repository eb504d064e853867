package roomserver

// The resident side of a partial-state ("faster") join: the send_join
// answer without most membership events.
// Spec: server-server-api, "PUT /_matrix/federation/v2/send_join"
// (omit_members, members_omitted, servers_in_room).

import (
	"context"
	"slices"
	"sort"
)

// maxHeroes is how many heroes a room summary names.
// Spec: client-server-api, "GET /_matrix/client/v3/sync", RoomSummary.
const maxHeroes = 5

// PartialSendJoinResponse is a send_join answer with members omitted.
type PartialSendJoinResponse struct {
	// State is the state before the join without m.room.member events,
	// except the joining user's own and, in a room with neither a name
	// nor a canonical alias, the heroes' memberships.
	State []*Event
	// AuthChain is the auth chain of the join and of State, less the
	// events already in State.
	AuthChain []*Event
	// ServersInRoom are the servers with joined members before the join.
	ServersInRoom []string
}

// PartialStateAndAuthChainBefore builds the omit_members=true answer to
// send_join for the stored join eventID.
func (s *Server) PartialStateAndAuthChainBefore(ctx context.Context, eventID string) (*PartialSendJoinResponse, error) {
	q := s.db.Reader()
	join, version, err := s.loadByID(ctx, q, eventID)
	if err != nil {
		return nil, err
	}
	full, err := s.snapshotEvents(ctx, q, version, join.row.StateBefore)
	if err != nil {
		return nil, err
	}
	joiner := ""
	if join.row.StateKey != nil {
		joiner = *join.row.StateKey
	}
	out := &PartialSendJoinResponse{ServersInRoom: joinedServersOf(full)}
	heroes := heroesOf(full, joiner)
	// Memberships the join is authorised by (a restricted join's
	// authoriser) stay: the joiner checks the join against this state.
	authOfJoin := join.pdu.AuthEventIDs()
	kept := map[string]bool{}
	for _, e := range full {
		if e.Type == "m.room.member" && e.StateKey != nil && *e.StateKey != joiner && !slices.Contains(heroes, *e.StateKey) &&
			!slices.Contains(authOfJoin, e.EventID) {
			continue
		}
		out.State = append(out.State, e)
		kept[e.EventID] = true
	}
	ids := []string{eventID}
	for _, e := range out.State {
		ids = append(ids, e.EventID)
	}
	chain, err := s.AuthChain(ctx, ids)
	if err != nil {
		return nil, err
	}
	for _, e := range chain {
		if !kept[e.EventID] && e.EventID != eventID {
			out.AuthChain = append(out.AuthChain, e)
		}
	}
	return out, nil
}

// heroesOf picks the members a room summary would name as heroes in
// state, other than self: none when the room has a name or a canonical
// alias; otherwise up to maxHeroes, joined and invited members first,
// then those who left or were banned, each group in the order they
// reached their membership. This matches the summary /sync builds.
func heroesOf(state []*Event, self string) []string {
	var members []*Event
	for _, e := range state {
		switch {
		case e.StateKey == nil:
		case e.Type == "m.room.name" || e.Type == "m.room.canonical_alias":
			return nil
		case e.Type == "m.room.member" && *e.StateKey != self:
			members = append(members, e)
		}
	}
	rank := func(e *Event) int {
		if e.Membership == "join" || e.Membership == "invite" {
			return 0
		}
		return 1
	}
	sort.SliceStable(members, func(i, j int) bool {
		if ri, rj := rank(members[i]), rank(members[j]); ri != rj {
			return ri < rj
		}
		return members[i].StreamPos < members[j].StreamPos
	})
	var out []string
	for _, e := range members {
		if len(out) == maxHeroes {
			break
		}
		out = append(out, *e.StateKey)
	}
	return out
}

// joinedServersOf lists, sorted, the servers of the joined members of state.
func joinedServersOf(state []*Event) []string {
	seen := map[string]bool{}
	var out []string
	for _, e := range state {
		if e.Type != "m.room.member" || e.StateKey == nil || e.Membership != "join" {
			continue
		}
		if d := domainOf(*e.StateKey); d != "" && !seen[d] {
			seen[d] = true
			out = append(out, d)
		}
	}
	sort.Strings(out)
	return out
}
