package federationapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/myelin-chat/myelin/roomserver"
)

var _ roomserver.Backfiller = (*Server)(nil)

// maxBackfill bounds one outbound backfill request.
const maxBackfill = 100

// Backfill asks the other servers in roomID, in turn, for up to limit
// events before from (GET /backfill) and returns those of the room that
// pass the signature and hash checks (a bad hash yields the redacted
// event). The roomserver checks their auth and stores them as history.
// Spec: server-server-api, "GET /_matrix/federation/v1/backfill/{roomId}".
func (s *Server) Backfill(ctx context.Context, roomID string, from []string, limit int) ([]json.RawMessage, error) {
	version, err := s.rooms.RoomVersion(ctx, roomID)
	if err != nil {
		return nil, err
	}
	servers, err := s.rooms.JoinedServers(ctx, roomID)
	if err != nil {
		return nil, err
	}
	q := url.Values{"v": from, "limit": {strconv.Itoa(min(max(limit, 1), maxBackfill))}}
	lastErr := errors.New("no other server is in the room")
	for _, server := range servers {
		if server == s.serverName {
			continue
		}
		var txn struct {
			PDUs []json.RawMessage `json:"pdus"`
		}
		if err := s.client.signed(ctx, server, http.MethodGet, "/_matrix/federation/v1/backfill/"+pathEscape(roomID)+"?"+q.Encode(), nil, &txn); err != nil {
			lastErr = err
			continue
		}
		var out []json.RawMessage
		for _, raw := range txn.PDUs {
			p, eventID, err := s.checkPDUVersion(ctx, raw, version)
			if err != nil || p.pdu.RoomID().String() != roomID {
				s.log.Info("dropping a backfilled event", "server", server, "event_id", eventID, "err", err)
				continue
			}
			out = append(out, p.pdu.JSON())
		}
		return out, nil
	}
	return nil, lastErr
}

// TimestampToEvent asks the other servers in roomID, in turn, for the
// event closest to ts in direction dir (GET /timestamp_to_event), then
// fetches that event from the same server (GET /event) and checks its
// signatures and hash. It returns the event's ID and federation JSON; the
// first server that answers both requests wins.
// Spec: server-server-api, "GET /_matrix/federation/v1/timestamp_to_event/{roomId}".
func (s *Server) TimestampToEvent(ctx context.Context, roomID string, ts int64, dir roomserver.Direction) (string, json.RawMessage, error) {
	version, err := s.rooms.RoomVersion(ctx, roomID)
	if err != nil {
		return "", nil, err
	}
	servers, err := s.rooms.JoinedServers(ctx, roomID)
	if err != nil {
		return "", nil, err
	}
	q := url.Values{"ts": {strconv.FormatInt(ts, 10)}, "dir": {string(dir)}}
	lastErr := errors.New("no other server is in the room")
	for _, server := range servers {
		if server == s.serverName {
			continue
		}
		var found struct {
			EventID string `json:"event_id"`
		}
		if err := s.client.signed(ctx, server, http.MethodGet, "/_matrix/federation/v1/timestamp_to_event/"+pathEscape(roomID)+"?"+q.Encode(), nil, &found); err != nil {
			lastErr = err
			continue
		}
		var txn struct {
			PDUs []json.RawMessage `json:"pdus"`
		}
		if err := s.client.signed(ctx, server, http.MethodGet, "/_matrix/federation/v1/event/"+pathEscape(found.EventID), nil, &txn); err != nil {
			lastErr = err
			continue
		}
		if len(txn.PDUs) != 1 {
			lastErr = fmt.Errorf("%s answered /event/%s with %d PDUs", server, found.EventID, len(txn.PDUs))
			continue
		}
		p, eventID, err := s.checkPDUVersion(ctx, txn.PDUs[0], version)
		if err == nil && (eventID != found.EventID || p.pdu.RoomID().String() != roomID) {
			err = fmt.Errorf("asked for %s in %s, got %s", found.EventID, roomID, eventID)
		}
		if err != nil {
			lastErr = err
			continue
		}
		return eventID, p.pdu.JSON(), nil
	}
	return "", nil, lastErr
}
