package federationapi

// The joining side of partial-state ("faster") joins, MSC3706/MSC3902:
// joinVia asks send_join for omit_members=true; an answer with
// members_omitted is stored as a partial-state room (the roomserver keeps
// the flag), the join returns, and a background resync fetches the full
// state before the join — GET /state_ids at each prev event of the join,
// then /state (or /event) for what this server lacks — from the join
// server, failing over to the other servers that were in the room, and
// hands it to the roomserver, which clears the flag. Rooms still partial
// at start (an interrupted resync) are resynced again.
// Spec: server-server-api, "PUT /_matrix/federation/v2/send_join".

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
)

// A partial-state join is given up when its resync cannot complete at
// all: every server of the room failed (unreachable, or refusing the
// state) in at least resyncGiveUpRounds rounds in a row spanning at
// least resyncGiveUp. Each local user still in the room then leaves it
// (abortPartialJoin), which stops the resync and purges the room's
// partial state (abandonResync, purgeAbandoned): the room was never
// usable in full here (member lists wait, eager /syncs leave it out), and
// nothing else would ever end it. The users see their leave and may
// join again. The streak is counted in memory: a restart starts it over.
// Synapse has no such abort yet; Complement msc3902 "Device list no
// longer tracked when failing to complete partial state join" expects
// it (the server stops sharing the room with its remote members).
const (
	resyncGiveUp       = 6 * time.Hour
	resyncGiveUpRounds = 10
)

// abortReason is the reason of the leaves abortPartialJoin sends.
const abortReason = "no server of the room gave its full state; the partial-state join was given up"

// resyncObserver, when set (by tests, through ObserveResyncs), is told
// of each attempt to fetch a room's full state, by any server of the
// process: a server started again after a restart runs its first
// attempts before a test could reach the new Server.
var resyncObserver atomic.Pointer[func(serverName, roomID string)]

// Resync retry bounds: a failed round over every server waits, doubling,
// from resyncRetryMin up to resyncRetryMax before the next.
const (
	resyncRetryMin = time.Second
	resyncRetryMax = time.Minute
)

// sendJoinAnswer is the body of a v2 send_join answer.
type sendJoinAnswer struct {
	State          []json.RawMessage `json:"state"`
	AuthChain      []json.RawMessage `json:"auth_chain"`
	Event          json.RawMessage   `json:"event"`
	MembersOmitted bool              `json:"members_omitted"`
	ServersInRoom  []string          `json:"servers_in_room"`
}

// resyncServers is the list of servers a partial-state room is resynced
// from: the join server, then servers_in_room, without repeats.
func resyncServers(joinServer string, inRoom []string) []string {
	out := []string{joinServer}
	for _, s := range inRoom {
		if s != "" && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// startResyncs resumes the resync of every room still partial (after a
// restart) in the background, and lets later joins start theirs, until
// bg ends; wg counts the resyncs.
func (s *Server) startResyncs(bg context.Context, wg *sync.WaitGroup) {
	s.resyncMu.Lock()
	s.resyncCtx, s.resyncWG = bg, wg
	s.resyncMu.Unlock()
	wg.Add(1)
	go func() {
		defer wg.Done()
		rooms, err := s.rooms.PartialStateRooms(bg)
		if err != nil {
			s.log.Warn("listing partial-state rooms", "err", err)
			return
		}
		for _, room := range rooms {
			s.startResync(room)
		}
	}()
}

// resumeResyncs starts the resync of every partial-state room whose
// resync does not run in this process, if this process runs them
// (split mode: another process joined them).
func (s *Server) resumeResyncs(ctx context.Context) {
	s.resyncMu.Lock()
	running := s.resyncCtx != nil
	s.resyncMu.Unlock()
	if !running {
		return
	}
	rooms, err := s.rooms.PartialStateRooms(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("listing partial-state rooms", "err", err)
		}
		return
	}
	for _, room := range rooms {
		s.startResync(room)
	}
}

// stopResyncs lets no more resyncs start (the running ones end with
// the context given to startResyncs).
func (s *Server) stopResyncs() {
	s.resyncMu.Lock()
	s.resyncCtx, s.resyncWG = nil, nil
	s.resyncMu.Unlock()
}

// startResync resyncs room in the background until it succeeds or the
// server closes. At most one resync per room runs in this process.
func (s *Server) startResync(room roomserver.PartialStateRoom) {
	s.resyncMu.Lock()
	defer s.resyncMu.Unlock()
	if s.resyncing == nil {
		s.resyncing = map[string]bool{}
	}
	if s.resyncCtx == nil {
		// Another process of a split deployment runs the resyncs: it
		// reads the partial-state rooms when woken (wakes.go).
		if s.wakes != nil {
			select {
			case s.resyncPublish <- struct{}{}:
			default:
			}
		}
		return
	}
	if s.resyncing[room.RoomID] {
		return
	}
	s.resyncing[room.RoomID] = true
	ctx, wg := s.resyncCtx, s.resyncWG
	wg.Add(1)
	go func() {
		defer wg.Done()
		if s.resyncUntilDone(ctx, room) {
			return // abandonResync removed the room from resyncing
		}
		s.resyncMu.Lock()
		delete(s.resyncing, room.RoomID)
		s.resyncMu.Unlock()
	}()
}

// abandonResync reports whether roomID's resync is to stop because no
// local user is joined to the room any more (each left, or was kicked or
// banned, while the room was partial): this server is then out of the
// room, a resident server need not answer its /state_ids, and nobody
// here can read the state. The caller then purges the room's
// partial-state bookkeeping (purgeAbandoned): a later local join goes
// through make_join/send_join like any join of a room this server left
// and, if answered with partial state, starts a new resync. On true the
// room is no longer in resyncing; the check and that removal happen
// under resyncMu, so a join stored before keepResyncing calls
// startResync is either seen here or finds no resync running.
// Synapse behaves alike: it stops the resync of a partial-state room it
// no longer has a member in (and purges the room).
// Spec: MSC3706; Complement msc3902 "Leave during resync/can be
// triggered by remote kick".
func (s *Server) abandonResync(ctx context.Context, roomID string) (bool, error) {
	s.resyncMu.Lock()
	defer s.resyncMu.Unlock()
	users, err := s.rooms.JoinedUsers(ctx, roomID)
	if err != nil {
		return false, err
	}
	for _, u := range users {
		if domainOf(u) == s.serverName {
			return false, nil
		}
	}
	delete(s.resyncing, roomID)
	return true, nil
}

// resyncGiveUpAfter is the failure streak after which a resync is
// given up: resyncGiveUp and resyncGiveUpRounds unless a test set
// others (SetResyncGiveUp).
func (s *Server) resyncGiveUpAfter() (time.Duration, int) {
	s.resyncMu.Lock()
	defer s.resyncMu.Unlock()
	if s.giveUpRounds > 0 {
		return s.giveUpAfter, s.giveUpRounds
	}
	return resyncGiveUp, resyncGiveUpRounds
}

// abortPartialJoin makes every local user joined to roomID leave it
// (see resyncGiveUp). The leaves are ordinary local events: stored,
// shown to the users' clients, and queued for the room's servers.
func (s *Server) abortPartialJoin(ctx context.Context, roomID string) error {
	users, err := s.rooms.JoinedUsers(ctx, roomID)
	if err != nil {
		return err
	}
	for _, userID := range users {
		if domainOf(userID) != s.serverName {
			continue
		}
		if _, err := s.rooms.Leave(ctx, roomserver.MembershipRequest{RoomID: roomID, Sender: userID, Reason: abortReason}); err != nil {
			return fmt.Errorf("leave of %s: %w", userID, err)
		}
	}
	return nil
}

// purgeWait bounds how long purgeAbandoned waits between two tries
// while the federation sender has not read the room's last events.
const purgeWait = 200 * time.Millisecond

// purgeAbandoned drops the partial-state bookkeeping of roomID, whose
// resync abandonResync stopped (roomserver.PurgePartialState says what
// goes and what stays). It first waits until the sender has queued
// every event of the room for its destinations: the room's last events
// (the local users' leaves) go to the servers the partial-state record
// names, which the purge deletes. A local user who joins meanwhile keeps
// the record (the purge checks it under the room's lock); a purge that
// fails is retried at the next start (startResyncs, then abandonResync).
func (s *Server) purgeAbandoned(ctx context.Context, roomID string) {
	for {
		var sent int64
		err := s.db.Reader().QueryRow(ctx, `SELECT fanout_pos FROM federation_sender_state WHERE id = 1`).Scan(&sent)
		if err == nil {
			var purged bool
			purged, err = s.rooms.PurgePartialState(ctx, roomID, sent)
			if err == nil {
				if purged {
					s.log.Info("partial state purged: every local user left before the resync completed", "room_id", roomID)
				}
				return
			}
		}
		if !errors.Is(err, roomserver.ErrPurgeBeforeSent) && !storage.IsNoRows(err) {
			if ctx.Err() == nil {
				s.log.Warn("purging the partial state of a room every local user left", "room_id", roomID, "err", err)
			}
			return
		}
		s.sender.wake()
		select {
		case <-ctx.Done():
			return
		case <-time.After(purgeWait):
		}
	}
}

// partialStateRoom reads roomID's partial-state record; ok is false if
// the room has full state.
func (s *Server) partialStateRoom(ctx context.Context, roomID string) (room roomserver.PartialStateRoom, ok bool, err error) {
	rooms, err := s.rooms.PartialStateRooms(ctx)
	if err != nil {
		return room, false, err
	}
	for _, r := range rooms {
		if r.RoomID == roomID {
			return r, true, nil
		}
	}
	return room, false, nil
}

// resyncUntilDone resyncs room until it succeeds, ctx ends, or no local
// user is left in the room; it returns true in the last case
// (abandonResync).
func (s *Server) resyncUntilDone(ctx context.Context, room roomserver.PartialStateRoom) bool {
	if s.beforeResync != nil {
		s.beforeResync(ctx, room.RoomID)
	}
	wait := resyncRetryMin
	var failingSince time.Time // start of the current streak of failed rounds
	failedRounds := 0
	for {
		if ctx.Err() != nil {
			return false
		}
		abandoned, err := s.abandonResync(ctx, room.RoomID)
		if abandoned {
			s.log.Info("partial state resync abandoned: no local user is in the room", "room_id", room.RoomID)
			s.purgeAbandoned(ctx, room.RoomID)
			return true
		}
		if err == nil {
			// A rejoin answered with the full state may have ended the
			// partial state while this resync waited (beforeResync, a
			// retry): nothing is left to fetch.
			if partial, perr := s.rooms.IsPartialState(ctx, room.RoomID); perr == nil && !partial {
				return false
			}
			if observe := resyncObserver.Load(); observe != nil {
				(*observe)(s.serverName, room.RoomID)
			}
			err = s.resync(ctx, room)
		}
		if err == nil {
			s.log.Info("partial state resync done", "room_id", room.RoomID)
			return false
		}
		if errors.Is(err, roomserver.ErrPartialJoinMoved) {
			// A local user rejoined through a resident server while
			// the room was partial: resync for that join instead.
			current, ok, rerr := s.partialStateRoom(ctx, room.RoomID)
			if rerr == nil && !ok {
				return false
			}
			if rerr == nil {
				s.log.Info("partial state join moved; resyncing for the new join", "room_id", room.RoomID, "join_event_id", current.JoinEventID)
				room = current
				failingSince, failedRounds = time.Time{}, 0
				continue
			}
			err = rerr
		}
		if failedRounds == 0 {
			failingSince = s.now()
		}
		failedRounds++
		giveUp, giveUpRounds := s.resyncGiveUpAfter()
		if failedRounds >= giveUpRounds && s.now().Sub(failingSince) >= giveUp {
			s.log.Warn("partial state resync failed on every server too long; giving the join up", "room_id", room.RoomID,
				"err", err, "failed_rounds", failedRounds, "since", failingSince)
			if aerr := s.abortPartialJoin(ctx, room.RoomID); aerr == nil {
				continue // abandonResync sees no local user now, and purges
			} else if ctx.Err() == nil {
				s.log.Warn("giving a partial state join up", "room_id", room.RoomID, "err", aerr)
			}
		}
		s.log.Warn("partial state resync failed; will retry", "room_id", room.RoomID, "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(wait):
		}
		wait = min(wait*2, resyncRetryMax)
		if partial, err := s.rooms.IsPartialState(ctx, room.RoomID); err == nil && !partial {
			return false // done meanwhile (another process, or a rejoin)
		}
	}
}

// resync tries each server of room in turn.
func (s *Server) resync(ctx context.Context, room roomserver.PartialStateRoom) error {
	join, _, err := s.rooms.FederationEvent(ctx, room.JoinEventID)
	if err != nil {
		return err
	}
	impl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(room.RoomVersion))
	if err != nil {
		return err
	}
	pdu, err := guard(func() (gomatrixserverlib.PDU, error) {
		return impl.NewEventFromTrustedJSONWithEventID(room.JoinEventID, join.JSON, false)
	})
	if err != nil {
		return err
	}
	prevs := pdu.PrevEventIDs()
	var errs []error
	for _, server := range room.Servers {
		if server == "" || server == s.serverName {
			continue
		}
		err := s.resyncFrom(ctx, server, room, prevs)
		if err == nil || errors.Is(err, roomserver.ErrPartialJoinMoved) {
			return err
		}
		errs = append(errs, fmt.Errorf("%s: %w", server, err))
	}
	if len(errs) == 0 {
		return errors.New("no server to resync from")
	}
	return errors.Join(errs...)
}

// resyncFrom fetches the state before each prev event of the join from
// server, and what this server lacks of it, and completes the room.
func (s *Server) resyncFrom(ctx context.Context, server string, room roomserver.PartialStateRoom, prevs []string) error {
	req := roomserver.CompletePartialStateRequest{RoomID: room.RoomID, JoinEventID: room.JoinEventID}
	for _, prev := range prevs {
		var ids struct {
			PDUIDs       []string `json:"pdu_ids"`
			AuthChainIDs []string `json:"auth_chain_ids"`
		}
		q := url.Values{"event_id": {prev}}
		uri := "/_matrix/federation/v1/state_ids/" + pathEscape(room.RoomID) + "?" + q.Encode()
		if err := s.client.signed(ctx, server, http.MethodGet, uri, nil, &ids); err != nil {
			return err
		}
		want := append(append(append([]string{}, ids.PDUIDs...), ids.AuthChainIDs...), prev)
		unknown, err := s.rooms.UnknownEvents(ctx, want)
		if err != nil {
			return err
		}
		fetched, err := s.fetchStateEvents(ctx, server, room, prev, unknown)
		if err != nil {
			return err
		}
		at := roomserver.StateBeforePrev{PrevEventID: prev, StateIDs: ids.PDUIDs}
		for _, raw := range fetched {
			if p, _, err := s.checkPDUVersion(ctx, raw, room.RoomVersion); err == nil && p.pdu.EventID() == prev {
				at.PrevEvent = raw // the roomserver stores it only if it is state
				continue
			}
			req.Events = append(req.Events, raw)
		}
		req.AtPrevs = append(req.AtPrevs, at)
	}
	// The servers the sender knew of while the room was partial, read
	// before the state is completed.
	known, err := s.rooms.JoinedServers(ctx, room.RoomID)
	if err != nil {
		return err
	}
	// The members the partial state holds as joined, for dropMembers.
	partialMembers, err := s.rooms.JoinedUsers(ctx, room.RoomID)
	if err != nil {
		return err
	}
	if err := s.rooms.CompletePartialState(ctx, req); err != nil {
		return err
	}
	if err := s.dropMembers(ctx, room.RoomID, partialMembers); err != nil {
		s.log.Warn("device lists of members a partial state resync removed", "room_id", room.RoomID, "err", err)
	}
	if err := s.announceAfterResync(ctx, room, known); err != nil {
		// The room is complete; the servers learn of the devices at
		// their users' next change instead.
		s.log.Warn("announcing devices after a partial state resync", "room_id", room.RoomID, "err", err)
	}
	if err := s.revealMembers(ctx, room); err != nil {
		s.log.Warn("device lists of members found by a partial state resync", "room_id", room.RoomID, "err", err)
	}
	return nil
}

// revealMembers hands the key server the remote members of a room whose
// resync just completed (DeviceListSink.MembersRevealed).
func (s *Server) revealMembers(ctx context.Context, room roomserver.PartialStateRoom) error {
	if s.edus.DeviceLists == nil {
		return nil
	}
	join, _, err := s.rooms.FederationEvent(ctx, room.JoinEventID)
	if err != nil {
		return err
	}
	users, err := s.rooms.JoinedUsers(ctx, room.RoomID)
	if err != nil {
		return err
	}
	var remote []string
	for _, u := range users {
		if domainOf(u) != s.serverName {
			remote = append(remote, u)
		}
	}
	return s.edus.DeviceLists.MembersRevealed(ctx, remote, join.OriginServerTS)
}

// announceAfterResync sends the devices of the room's local members to
// the servers the resync found in the room that the sender did not know
// of while the room was partial (known: send_join's servers_in_room and
// those with a member in the partial state). Those servers were sent
// none of the members' device-list updates meanwhile, so their copies
// may be stale. A server counts as found if it has a joined member in
// the full state before the join or in the current state, or a join
// since ours that the resync upheld (ServersJoinedSince): one that was
// in the room at the join, or joined later and was wrongly held out of
// it by the partial state (an event the resync rejects kicked its
// member), still missed the updates if it has left since.
// Spec: server-server-api, "Device Management"; MSC3706 (servers_in_room
// may be incomplete); Complement msc3902 "Device list updates reach
// incorrectly absent servers once partial state join completes" and
// "... incorrectly kicked servers ... even though remote server left
// room".
func (s *Server) announceAfterResync(ctx context.Context, room roomserver.PartialStateRoom, known []string) error {
	if s.userKeys == nil {
		return nil
	}
	told := map[string]bool{s.serverName: true}
	for _, d := range append(slices.Clone(room.Servers), known...) {
		told[d] = true
	}
	var dests []string
	add := func(server string) {
		if server != "" && !told[server] {
			told[server] = true
			dests = append(dests, server)
		}
	}
	before, _, err := s.rooms.StateAndAuthChainBefore(ctx, room.JoinEventID)
	if err != nil {
		return err
	}
	for _, e := range before {
		if e.Type == "m.room.member" && e.StateKey != nil && e.Membership == "join" {
			add(domainOf(*e.StateKey))
		}
	}
	current, err := s.rooms.JoinedServersInState(ctx, room.RoomID)
	if err != nil {
		return err
	}
	since, err := s.rooms.ServersJoinedSince(ctx, room.RoomID, room.JoinEventID)
	if err != nil {
		return err
	}
	for _, d := range append(current, since...) {
		add(d)
	}
	if len(dests) == 0 {
		return nil
	}
	users, err := s.rooms.JoinedUsers(ctx, room.RoomID)
	if err != nil {
		return err
	}
	for _, userID := range users {
		if domainOf(userID) != s.serverName {
			continue
		}
		if err := s.sendDevices(ctx, userID, dests); err != nil {
			return err
		}
	}
	return nil
}

// fetchStateEvents fetches the events of unknown from server — the state
// at prev with its auth chain through /state when more than prev is
// missing, prev itself through /event — checking signatures and hashes.
func (s *Server) fetchStateEvents(ctx context.Context, server string, room roomserver.PartialStateRoom, prev string, unknown []string) ([]json.RawMessage, error) {
	missing := map[string]bool{}
	for _, id := range unknown {
		missing[id] = true
	}
	var out []json.RawMessage
	take := func(list []json.RawMessage) error {
		for _, raw := range list {
			p, id, err := s.checkPDUVersion(ctx, raw, room.RoomVersion)
			if err != nil {
				if missing[id] {
					return fmt.Errorf("event %s: %w", id, err)
				}
				continue
			}
			if missing[p.pdu.EventID()] {
				delete(missing, p.pdu.EventID())
				out = append(out, p.pdu.JSON())
			}
		}
		return nil
	}
	if len(missing) > 1 || len(missing) == 1 && !missing[prev] {
		var st struct {
			PDUs      []json.RawMessage `json:"pdus"`
			AuthChain []json.RawMessage `json:"auth_chain"`
		}
		q := url.Values{"event_id": {prev}}
		uri := "/_matrix/federation/v1/state/" + pathEscape(room.RoomID) + "?" + q.Encode()
		if err := s.client.signed(ctx, server, http.MethodGet, uri, nil, &st); err != nil {
			return nil, err
		}
		if err := take(append(st.PDUs, st.AuthChain...)); err != nil {
			return nil, err
		}
	}
	for id := range missing {
		var ev struct {
			PDUs []json.RawMessage `json:"pdus"`
		}
		if err := s.client.signed(ctx, server, http.MethodGet, "/_matrix/federation/v1/event/"+pathEscape(id), nil, &ev); err != nil {
			return nil, err
		}
		if err := take(ev.PDUs); err != nil {
			return nil, err
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%d events of the state are missing from %s's answers", len(missing), server)
	}
	return out, nil
}
