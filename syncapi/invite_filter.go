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
