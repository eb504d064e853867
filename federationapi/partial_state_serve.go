package federationapi

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
)

// partialSendJoinAnswer answers PUT /v2/send_join?omit_members=true with
// the reduced state: membership events left out (but for the joiner's
// and the heroes'), the auth chain without what state already holds,
// and the servers in the room before the join; event, when set, is the
// join as this server signed and stored it.
// Spec: server-server-api, "PUT /_matrix/federation/v2/send_join".
func (s *Server) partialSendJoinAnswer(w http.ResponseWriter, r *http.Request, eventID string, event json.RawMessage) error {
	resp, err := s.rooms.PartialStateAndAuthChainBefore(r.Context(), eventID)
	if err != nil {
		return err
	}
	servers := resp.ServersInRoom
	if servers == nil {
		servers = []string{}
	}
	out := map[string]any{
		"origin": s.serverName, "state": pdus(resp.State), "auth_chain": pdus(resp.AuthChain),
		"members_omitted": true, "servers_in_room": servers,
	}
	if event != nil {
		out["event"] = event
	}
	return httpx.OK(w, out)
}

// refuseWhilePartial answers M_NOT_FOUND to make_join, send_join,
// make_knock and send_knock for a room whose state is partial: this
// server cannot give the joiner the room's full state nor check the
// membership against it, so the remote server should use another
// resident server (MSC3706; Synapse answers the same).
func (s *Server) refuseWhilePartial(ctx context.Context, roomID, membership string) error {
	if membership != "join" && membership != "knock" {
		return nil
	}
	partial, err := s.rooms.IsPartialState(ctx, roomID)
	if err != nil {
		return err
	}
	if partial {
		return mxerr.New(mxerr.NotFound, "this server has only partial state for %s", roomID)
	}
	return nil
}
