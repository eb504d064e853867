package homeserver

import (
	"context"
	"encoding/json"

	"github.com/myelin-chat/myelin/clientapi"
	"github.com/myelin-chat/myelin/federationapi"
)

// remoteServers hands other components' calls to the federation API.
// The federation API is built last, because inbound EDUs and queries
// land in the client API and the key server; *fed is set before
// assemble returns, and no request is served before that.
type remoteServers struct{ fed **federationapi.Server }

func (r remoteServers) JoinRemote(ctx context.Context, roomIDOrAlias, userID string, via []string) (string, error) {
	return (*r.fed).JoinRemote(ctx, roomIDOrAlias, userID, via)
}

func (r remoteServers) LeaveRemote(ctx context.Context, roomID, userID string, via []string) error {
	return (*r.fed).LeaveRemote(ctx, roomID, userID, via)
}

// clientAPI is r as clientapi.Federation; nil when federation is off.
func (r *remoteServers) clientAPI() clientapi.Federation {
	if r == nil {
		return nil
	}
	return r
}

func (r remoteServers) QueryDirectory(ctx context.Context, alias string) (string, []string, error) {
	return (*r.fed).QueryDirectory(ctx, alias)
}

func (r remoteServers) RemotePublicRooms(ctx context.Context, server string, limit int, since, filter string) (json.RawMessage, error) {
	return (*r.fed).RemotePublicRooms(ctx, server, limit, since, filter)
}

func (r remoteServers) QueryProfile(ctx context.Context, userID, field string) (map[string]json.RawMessage, error) {
	return (*r.fed).QueryProfile(ctx, userID, field)
}
