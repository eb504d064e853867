package federationapi

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
)

// SpaceHierarchy summarises local rooms for other servers' space
// hierarchy requests (clientapi.Server, which owns room summaries).
type SpaceHierarchy interface {
	// ServerHierarchy returns the body of GET /hierarchy/{roomId} as
	// origin may see it: the room, its children that origin could peek
	// or join, and the children it could not. M_NOT_FOUND if this server
	// is not in the room or origin may not see it.
	ServerHierarchy(ctx context.Context, origin, roomID string, suggestedOnly bool) (json.RawMessage, error)
}

// hierarchy is GET /_matrix/federation/v1/hierarchy/{roomId}.
// Spec: server-server-api, "GET /_matrix/federation/v1/hierarchy/{roomId}".
func (s *Server) hierarchy(w http.ResponseWriter, r *http.Request) error {
	suggestedOnly := false
	switch r.URL.Query().Get("suggested_only") {
	case "", "false":
	case "true":
		suggestedOnly = true
	default:
		return mxerr.New(mxerr.InvalidParam, "suggested_only must be true or false")
	}
	if s.spaces == nil {
		return mxerr.New(mxerr.NotFound, "room summaries are not served by this server")
	}
	body, err := s.spaces.ServerHierarchy(r.Context(), originOf(r.Context()), roomParam(r), suggestedOnly)
	if err != nil {
		return err
	}
	return httpx.OK(w, body)
}

// RemoteHierarchy asks server for the space hierarchy of roomID (its
// answer is not paginated: the room, its accessible children and the
// inaccessible ones). Errors are fit for clients (see ClientError).
// Spec: server-server-api, "GET /_matrix/federation/v1/hierarchy/{roomId}".
func (s *Server) RemoteHierarchy(ctx context.Context, server, roomID string, suggestedOnly bool) (json.RawMessage, error) {
	q := url.Values{}
	if suggestedOnly {
		q.Set("suggested_only", "true")
	}
	uri := "/_matrix/federation/v1/hierarchy/" + pathEscape(roomID)
	if len(q) > 0 {
		uri += "?" + q.Encode()
	}
	var out json.RawMessage
	if err := s.client.signed(ctx, server, http.MethodGet, uri, nil, &out); err != nil {
		return nil, ClientError(err)
	}
	if len(out) == 0 || out[0] != '{' {
		return nil, ClientError(&RemoteError{Server: server, Status: http.StatusBadGateway, Message: "answered with something other than an object"})
	}
	return out, nil
}
