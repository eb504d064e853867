package homeserver

import (
	"context"
	"encoding/json"

	"github.com/myelin-chat/myelin/clientapi"
	"github.com/myelin-chat/myelin/federationapi"
	"github.com/myelin-chat/myelin/keyserver"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/syncapi"
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

func (r remoteServers) PendingRemoteRooms(ctx context.Context, userID string) ([]string, error) {
	return (*r.fed).PendingRemoteRooms(ctx, userID)
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

func (r remoteServers) RemotePublicRooms(ctx context.Context, server string, limit int, since, filter string, includeAllNetworks bool, thirdPartyInstanceID string) (json.RawMessage, error) {
	return (*r.fed).RemotePublicRooms(ctx, server, limit, since, filter, includeAllNetworks, thirdPartyInstanceID)
}

func (r remoteServers) RemoteHierarchy(ctx context.Context, server, roomID string, suggestedOnly bool) (json.RawMessage, error) {
	return (*r.fed).RemoteHierarchy(ctx, server, roomID, suggestedOnly)
}

func (r remoteServers) RemoteEventRelationships(ctx context.Context, roomID string, req roomserver.RelationshipsRequest) error {
	return (*r.fed).RemoteEventRelationships(ctx, roomID, req)
}

func (r remoteServers) QueryProfile(ctx context.Context, userID, field string) (map[string]json.RawMessage, error) {
	return (*r.fed).QueryProfile(ctx, userID, field)
}

func (r remoteServers) KnockRemote(ctx context.Context, roomIDOrAlias, userID string, content map[string]any, via []string) (string, error) {
	return (*r.fed).KnockRemote(ctx, roomIDOrAlias, userID, content, via)
}

func (r remoteServers) InviteRemote(ctx context.Context, req roomserver.MembershipRequest) (string, error) {
	return (*r.fed).InviteRemote(ctx, req)
}

func (r remoteServers) RemoteInviteHead(ctx context.Context) (int64, error) {
	return (*r.fed).RemoteInviteHead(ctx)
}

func (r remoteServers) RemoteInvitesSince(ctx context.Context, userID string, since, to int64) ([]federationapi.RemoteInvite, error) {
	return (*r.fed).RemoteInvitesSince(ctx, userID, since, to)
}

// syncAPI is r as syncapi.RemoteInvites; nil when federation is off.
func (r *remoteServers) syncAPI() syncapi.RemoteInvites {
	if r == nil {
		return nil
	}
	return r
}

func (r remoteServers) QueueEDU(ctx context.Context, destinations []string, eduType string, content any) error {
	return (*r.fed).QueueEDU(ctx, destinations, eduType, content)
}

// keyServer is r.QueueEDU for the key server; nil when federation is off.
func (r *remoteServers) keyServer() keyserver.EDUQueue {
	if r == nil {
		return nil
	}
	return r.QueueEDU
}

func (r remoteServers) QueryRemoteKeys(ctx context.Context, server string, deviceKeys map[string][]string) (json.RawMessage, error) {
	return (*r.fed).QueryRemoteKeys(ctx, server, deviceKeys)
}

func (r remoteServers) ClaimRemoteKeys(ctx context.Context, server string, oneTimeKeys map[string]map[string]string) (json.RawMessage, error) {
	return (*r.fed).ClaimRemoteKeys(ctx, server, oneTimeKeys)
}

func (r remoteServers) RemoteUserDevices(ctx context.Context, server, userID string) (json.RawMessage, error) {
	return (*r.fed).RemoteUserDevices(ctx, server, userID)
}

// remoteKeys is r as the key server's RemoteKeys; nil when federation is off.
func (r *remoteServers) remoteKeys() keyserver.RemoteKeys {
	if r == nil {
		return nil
	}
	return r
}

// sharedServers lists the servers sharing a joined room with a user, for
// the key server's device-list updates.
func sharedServers(rooms *roomserver.Server) func(ctx context.Context, userID string) ([]string, error) {
	return func(ctx context.Context, userID string) ([]string, error) {
		joined, err := rooms.JoinedRooms(ctx, userID)
		if err != nil {
			return nil, err
		}
		seen := map[string]bool{}
		var out []string
		for _, roomID := range joined {
			servers, err := rooms.JoinedServers(ctx, roomID)
			if err != nil {
				return nil, err
			}
			for _, s := range servers {
				if !seen[s] {
					seen[s] = true
					out = append(out, s)
				}
			}
		}
		return out, nil
	}
}

// DestinationBackingOff is federationapi.Server.DestinationBackingOff:
// the key server's resync loops skip a retry while it says so.
func (r remoteServers) DestinationBackingOff(ctx context.Context, server string) bool {
	return (*r.fed).DestinationBackingOff(ctx, server)
}
