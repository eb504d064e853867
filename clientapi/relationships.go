package clientapi

import (
	"context"
	"net/http"

	"github.com/go-chi/chi/v5"
	"github.com/tidwall/sjson"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/roomserver"
)

// MSC2836 threading: POST /_matrix/client/unstable/event_relationships
// walks the tree of m.relationship replies around an event. The walk is
// the roomserver's (relationships_walk.go); this handler parses the
// body, lets the walk ask other servers (federationapi) about events it
// lacks, and renders the events with their unsigned children figures.
// Spec: MSC2836 (proposals/2836-threading.md), "Querying relationships".

// Relationships is the roomserver's MSC2836 walk.
type Relationships interface {
	EventRelationships(ctx context.Context, q roomserver.RelationshipsQuery) (*roomserver.RelationshipsResponse, error)
}

// RemoteRelationships is the federation API's side of the walk.
type RemoteRelationships interface {
	// RemoteEventRelationships asks the other servers in roomID about
	// req's walk and stores the events they return.
	RemoteEventRelationships(ctx context.Context, roomID string, req roomserver.RelationshipsRequest) error
}

// eventRelationshipRoutes registers MSC2836's endpoint.
func (s *Server) eventRelationshipRoutes(r chi.Router) {
	handle(r, http.MethodPost, "/_matrix/client/unstable/event_relationships", s.eventRelationships)
}

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
	me := caller(r)
	q := roomserver.RelationshipsQuery{Request: req, UserID: me.UserID}
	if remote, ok := s.federation.(RemoteRelationships); ok {
		q.Fetch = remote.RemoteEventRelationships
	}
	res, err := s.rooms.rooms.EventRelationships(ctx, q)
	if err != nil {
		return err
	}
	evs := make([]*roomserver.Event, len(res.Events))
	for i, e := range res.Events {
		evs[i] = e.Event
	}
	out, err := s.formatter(me.UserID, me.DeviceID).many(ctx, evs)
	if err != nil {
		return err
	}
	for i, e := range res.Events {
		if out[i], err = sjson.SetBytes(out[i], "unsigned.children", e.Children.Children); err != nil {
			return err
		}
		if out[i], err = sjson.SetBytes(out[i], "unsigned.children_hash", e.Children.Hash); err != nil {
			return err
		}
		if e.Outlier {
			// The user's membership at an event fetched from another
			// server is not known here (MSC4115 asks for it "at the
			// point of the event"): left out rather than guessed.
			if out[i], err = sjson.DeleteBytes(out[i], "unsigned.membership"); err != nil {
				return err
			}
		}
	}
	resp := map[string]any{"events": out, "limited": res.Limited}
	if res.NextBatch != "" {
		resp["next_batch"] = res.NextBatch
	}
	return httpx.OK(w, resp)
}

// checkRelationshipTarget enforces MSC2836's rules for a client's new
// event whose content has an m.relationship: the event it names must be
// one the server has (or can fetch from another server in the room),
// in the same room, and one the sender may see (so a reference cannot
// probe for hidden events). A malformed m.relationship is no
// relationship and passes. Violations are 400 M_INVALID_PARAM.
// Spec: MSC2836, "Making relationships", edge cases.
func (s *Server) checkRelationshipTarget(ctx context.Context, userID, roomID string, content []byte) error {
	parentID, _, ok := roomserver.ContentRelationship(content)
	if !ok {
		return nil
	}
	q := roomserver.RelationshipsQuery{UserID: userID, Request: &roomserver.RelationshipsRequest{
		EventID: parentID, RoomID: roomID, Limit: 1, Direction: "up"}}
	if remote, ok := s.federation.(RemoteRelationships); ok {
		q.Fetch = remote.RemoteEventRelationships
	}
	_, err := s.rooms.rooms.EventRelationships(ctx, q)
	if mxerr.Is(err, mxerr.NotFound) {
		return mxerr.New(mxerr.InvalidParam, "m.relationship names %s, which is not an event of this room you may see", parentID)
	}
	return err
}
