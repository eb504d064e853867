package federationapi

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/myelin-chat/myelin/internal/mxerr"
)

// Outbound queries made on behalf of local clients. Errors are
// ClientError's: the remote's 4xx, or 502, never 401 (security case 32).

// QueryDirectory resolves an alias of another server.
// Spec: server-server-api, "GET /_matrix/federation/v1/query/directory".
func (s *Server) QueryDirectory(ctx context.Context, alias string) (string, []string, error) {
	server := domainOf(alias)
	if !strings.HasPrefix(alias, "#") || server == "" {
		return "", nil, mxerr.New(mxerr.InvalidParam, "%q is not a room alias", alias)
	}
	var dir struct {
		RoomID  string   `json:"room_id"`
		Servers []string `json:"servers"`
	}
	q := url.Values{"room_alias": {alias}}
	if err := s.client.signed(ctx, server, http.MethodGet, "/_matrix/federation/v1/query/directory?"+q.Encode(), nil, &dir); err != nil {
		return "", nil, ClientError(err)
	}
	if !strings.HasPrefix(dir.RoomID, "!") {
		return "", nil, ClientError(&RemoteError{Server: server, Status: http.StatusBadGateway, Message: "answered without a room ID"})
	}
	return dir.RoomID, dir.Servers, nil
}

// QueryProfile reads a remote user's profile, or one field of it.
// Spec: server-server-api, "GET /_matrix/federation/v1/query/profile".
func (s *Server) QueryProfile(ctx context.Context, userID, field string) (map[string]json.RawMessage, error) {
	server := domainOf(userID)
	if server == "" || server == s.serverName {
		return nil, mxerr.New(mxerr.InvalidParam, "%q is not a user of another server", userID)
	}
	q := url.Values{"user_id": {userID}}
	if field != "" {
		q.Set("field", field)
	}
	var fields map[string]json.RawMessage
	if err := s.client.signed(ctx, server, http.MethodGet, "/_matrix/federation/v1/query/profile?"+q.Encode(), nil, &fields); err != nil {
		return nil, ClientError(err)
	}
	if fields == nil {
		fields = map[string]json.RawMessage{}
	}
	return fields, nil
}

// RemotePublicRooms reads another server's public room directory,
// passing on include_all_networks and third_party_instance_id (that
// server's instance IDs, from its clients' protocols).
// Spec: server-server-api, "GET /_matrix/federation/v1/publicRooms" and
// "POST /_matrix/federation/v1/publicRooms".
func (s *Server) RemotePublicRooms(ctx context.Context, server string, limit int, since, filter string, includeAllNetworks bool, thirdPartyInstanceID string) (json.RawMessage, error) {
	var out json.RawMessage
	var err error
	if filter == "" {
		q := url.Values{}
		if limit > 0 {
			q.Set("limit", strconv.Itoa(limit))
		}
		if since != "" {
			q.Set("since", since)
		}
		if includeAllNetworks {
			q.Set("include_all_networks", "true")
		}
		if thirdPartyInstanceID != "" {
			q.Set("third_party_instance_id", thirdPartyInstanceID)
		}
		err = s.client.signed(ctx, server, http.MethodGet, "/_matrix/federation/v1/publicRooms?"+q.Encode(), nil, &out)
	} else {
		body := map[string]any{"filter": map[string]string{"generic_search_term": filter}}
		if limit > 0 {
			body["limit"] = limit
		}
		if since != "" {
			body["since"] = since
		}
		if includeAllNetworks {
			body["include_all_networks"] = true
		}
		if thirdPartyInstanceID != "" {
			body["third_party_instance_id"] = thirdPartyInstanceID
		}
		err = s.client.signed(ctx, server, http.MethodPost, "/_matrix/federation/v1/publicRooms", body, &out)
	}
	if err != nil {
		return nil, ClientError(err)
	}
	if len(out) == 0 || out[0] != '{' {
		return nil, ClientError(&RemoteError{Server: server, Status: http.StatusBadGateway, Message: "answered with something other than an object"})
	}
	return out, nil
}
