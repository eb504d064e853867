package syncapi

import (
	"context"

	"github.com/myelin-chat/myelin/clientapi"
)

// hideInvite reports whether an invite from inviter is left out of the
// syncing user's response: the user ignores the inviter (m.ignored_user_list,
// spec client-server-api "Ignoring Users"), blocks all invites
// (m.invite_permission_config, spec "Invite permission": such invites
// "MUST NOT be served over client synchronisation endpoints"), or their
// MSC4155 invite permission config ignores or blocks them (a blocked invite can only be
// here if it arrived before the config). The config is read once per
// response, and only when there is an invite to judge.
func (b *roomBuilder) hideInvite(ctx context.Context, inviter string) (bool, error) {
	if b.ignored[inviter] {
		return true, nil
	}
	if inviter == "" || inviter == b.req.userID {
		return false, nil
	}
	if b.invitePermission == nil {
		stable, err := b.s.acct.GlobalAccountData(ctx, b.req.userID, clientapi.StableInvitePermissionType)
		if err != nil {
			return false, err
		}
		content, err := b.s.acct.GlobalAccountData(ctx, b.req.userID, clientapi.InvitePermissionConfigType)
		if err != nil {
			return false, err
		}
		b.invitePermission = clientapi.ParseInvitePermissionConfig(content)
		b.blocksAllInvites = clientapi.BlocksAllInvites(stable)
	}
	return b.blocksAllInvites || b.invitePermission.Rule(inviter) != clientapi.InviteAllowed, nil
}

// dropHiddenInvites removes from sliding sync's candidates the invites
// hideInvite hides (apart from ignored users, which sliding sync does not
// filter yet), so blocked and MSC4155-ignored invites are listed nowhere.
// Spec: client-server-api, "Invite permission": blocked invites "MUST NOT
// be served over client synchronisation endpoints".
func (s *Server) dropHiddenInvites(ctx context.Context, userID string, cands []*candidate) ([]*candidate, error) {
	b := &roomBuilder{s: s, req: &syncRequest{userID: userID}}
	out := cands[:0]
	for _, c := range cands {
		if c.m.Membership == "invite" {
			st, err := b.stripped(ctx, c.m.RoomID)
			if err != nil {
				return nil, err
			}
			hide, err := b.hideInvite(ctx, inviter(st, userID))
			if err != nil {
				return nil, err
			}
			if hide {
				continue
			}
		}
		out = append(out, c)
	}
	return out, nil
}
