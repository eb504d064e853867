package federationapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/tidwall/sjson"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/roomserver"
)

// MSC2836 threading over federation: other servers walk a thread held
// here with POST /_matrix/federation/unstable/event_relationships, and
// this server asks the servers of a room the same when a local user's
// walk reaches an event it lacks, or one with children it has not seen.
// Spec: MSC2836, "Querying relationships over federation" and
// "Exploring dense threads".

// eventRelationshipsPath is the federation endpoint (MSC2836 names
// /v1; servers serve it under unstable until the MSC is merged).
const eventRelationshipsPath = "/_matrix/federation/unstable/event_relationships"

const (
	// maxRelationshipEvents bounds the events, and maxRelationshipAuth
	// the auth events, taken from one answer.
	maxRelationshipEvents = 200
	maxRelationshipAuth   = 2000
	// relationshipTimeout bounds one outbound request.
	relationshipTimeout = 10 * time.Second
)

// relationshipsResponse is the federation answer: the client API's,
// plus the auth chain of the events.
type relationshipsResponse struct {
	Events    []json.RawMessage `json:"events"`
	NextBatch string            `json:"next_batch,omitempty"`
	Limited   bool              `json:"limited"`
	AuthChain []json.RawMessage `json:"auth_chain"`
}

// eventRelationships is POST /unstable/event_relationships: the walk as
// for a client, with the origin's server history visibility, and no
// requests to other servers on its behalf (MSC2836: no routing loops).
// The origin must be in the anchor's room and allowed by its ACL.
func (s *Server) eventRelationships(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	body, err := httpx.ReadBody(r)
	if err != nil {
		return err
	}
	req, err := roomserver.ParseRelationshipsRequest(body)
	if err != nil {
		return err
	}
	origin := originOf(ctx)
	res, err := s.rooms.EventRelationships(ctx, roomserver.RelationshipsQuery{Request: req, Server: origin})
	if err != nil {
		return err
	}
	out := relationshipsResponse{Events: []json.RawMessage{}, AuthChain: []json.RawMessage{}, Limited: res.Limited, NextBatch: res.NextBatch}
	ids := make([]string, 0, len(res.Events))
	for i, e := range res.Events {
		if i == 0 {
			// Spec: server-server-api, "Server Access Control Lists".
			if err := s.checkACL(ctx, e.RoomID, origin); err != nil {
				return err
			}
		}
		raw, err := withChildren(e.JSON, e.Children)
		if err != nil {
			return err
		}
		out.Events = append(out.Events, raw)
		ids = append(ids, e.EventID)
	}
	chain, err := s.rooms.AuthChain(ctx, ids)
	if err != nil {
		return err
	}
	out.AuthChain = append(out.AuthChain, pdus(chain)...)
	return httpx.OK(w, out)
}

// withChildren sets unsigned.children and unsigned.children_hash.
func withChildren(raw json.RawMessage, sum roomserver.ChildrenSummary) (json.RawMessage, error) {
	out, err := sjson.SetBytes(raw, "unsigned.children", sum.Children)
	if err != nil {
		return nil, err
	}
	return sjson.SetBytes(out, "unsigned.children_hash", sum.Hash)
}

// RemoteEventRelationships asks the other servers in roomID, in turn,
// for the walk req describes, and stores what the first to answer
// returns: the events and their auth chain that pass the signature and
// hash checks and are of the room, as outliers (each authorised against
// its own auth events), and the children figures reported for them.
// It fails when this server is not in the room or no server answered.
func (s *Server) RemoteEventRelationships(ctx context.Context, roomID string, req roomserver.RelationshipsRequest) error {
	version, err := s.rooms.RoomVersion(ctx, roomID)
	if err != nil {
		return err
	}
	servers, err := s.rooms.JoinedServers(ctx, roomID)
	if err != nil {
		return err
	}
	lastErr := errors.New("no other server is in the room")
	for _, server := range servers {
		if server == s.serverName {
			continue
		}
		var res relationshipsResponse
		reqCtx, cancel := context.WithTimeout(ctx, relationshipTimeout)
		err := s.client.signed(reqCtx, server, http.MethodPost, eventRelationshipsPath, req, &res)
		cancel()
		if err != nil {
			lastErr = err
			continue
		}
		return s.storeRelationships(ctx, server, roomID, version, &res)
	}
	return lastErr
}

// storeRelationships checks and stores one server's answer.
func (s *Server) storeRelationships(ctx context.Context, server, roomID, version string, res *relationshipsResponse) error {
	if len(res.Events) > maxRelationshipEvents || len(res.AuthChain) > maxRelationshipAuth {
		return fmt.Errorf("%s answered %d events and %d auth events, over the bounds", server, len(res.Events), len(res.AuthChain))
	}
	var batch []json.RawMessage
	reported := map[string]roomserver.ChildrenSummary{}
	var order []string
	for i, raw := range append(res.AuthChain, res.Events...) {
		p, eventID, err := s.checkPDUVersion(ctx, raw, version)
		if err != nil || p.pdu.RoomID().String() != roomID {
			s.log.Debug("event_relationships: dropping an event", "server", server, "event_id", eventID, "err", err)
			continue
		}
		batch = append(batch, p.pdu.JSON())
		if i >= len(res.AuthChain) {
			if sum, ok := roomserver.ParseUnsignedChildren(raw); ok {
				reported[eventID] = sum
				order = append(order, eventID)
			}
		}
	}
	if len(batch) == 0 {
		return nil
	}
	outcomes, err := s.rooms.InputOutliers(ctx, roomID, batch)
	if err != nil {
		return err
	}
	for _, id := range order {
		if o, ok := outcomes[id]; !ok || o == roomserver.Rejected {
			continue
		}
		if err := s.rooms.RecordRemoteChildren(ctx, id, reported[id]); err != nil {
			return err
		}
	}
	return nil
}
