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
