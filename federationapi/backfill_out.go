package federationapi

import (
	"context"
	"encoding/json"
	"errors"
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
