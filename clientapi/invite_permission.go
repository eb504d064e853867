package clientapi

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"

	"github.com/myelin-chat/myelin/internal/mxerr"
)

// Invite filtering (MSC4155): a user's global account data
// org.matrix.msc4155.invite_permission_config lists users and servers
// whose invites are allowed, ignored (accepted but never shown to the
// user) or blocked (refused with 403), as globs (* and ?).
//
// The first list that matches the inviter decides, in this order:
// allowed_users, ignored_users, blocked_users, allowed_servers,
// ignored_servers, blocked_servers; an inviter no list matches is
// allowed. So a user named in allowed_users gets through a blocked
// server, and a user named in blocked_users is refused by an allowed one.

// InvitePermissionConfigType is the account data type of the config.
const InvitePermissionConfigType = "org.matrix.msc4155.invite_permission_config"

// StableInvitePermissionType is the spec's account data type: with
// default_action "block" the user refuses every invite.
// Spec: client-server-api, "Invite permission" (v1.18).
const StableInvitePermissionType = "m.invite_permission_config"

// errInviteBlocked is the spec's error for an invite the invitee blocks.
const errInviteBlocked mxerr.Code = "M_INVITE_BLOCKED"

// BlocksAllInvites reports whether m.invite_permission_config content
// blocks every invite.
func BlocksAllInvites(content json.RawMessage) bool {
	var c struct {
		DefaultAction string `json:"default_action"`
	}
	return len(content) > 0 && json.Unmarshal(content, &c) == nil && c.DefaultAction == "block"
}

// InviteRule is what a user's config says about one inviter.
type InviteRule int

const (
	// InviteAllowed: the invite is delivered as usual.
	InviteAllowed InviteRule = iota
	// InviteIgnored: the invite is accepted but not shown to the user.
	InviteIgnored
	// InviteBlocked: the invite is refused with 403 M_FORBIDDEN.
	InviteBlocked
)

// InvitePermissionConfig is a parsed config. A field that is absent, null
// or not a list of strings is empty.
type InvitePermissionConfig struct {
	AllowedUsers, IgnoredUsers, BlockedUsers       []string
	AllowedServers, IgnoredServers, BlockedServers []string
}

// ParseInvitePermissionConfig reads the config's content; nil content
// (unset or deleted) allows everyone.
func ParseInvitePermissionConfig(content json.RawMessage) *InvitePermissionConfig {
	var raw map[string]json.RawMessage
	if len(content) == 0 || json.Unmarshal(content, &raw) != nil {
		return &InvitePermissionConfig{}
	}
	list := func(key string) []string {
		var out []string
		var items []json.RawMessage
		if json.Unmarshal(raw[key], &items) != nil {
			return nil
		}
		for _, item := range items {
			var s string
			if json.Unmarshal(item, &s) == nil {
				out = append(out, s)
			}
		}
		return out
	}
	return &InvitePermissionConfig{
		AllowedUsers: list("allowed_users"), IgnoredUsers: list("ignored_users"), BlockedUsers: list("blocked_users"),
		AllowedServers: list("allowed_servers"), IgnoredServers: list("ignored_servers"), BlockedServers: list("blocked_servers"),
	}
}

// Rule returns the rule for invites from inviter (a user ID).
func (c *InvitePermissionConfig) Rule(inviter string) InviteRule {
	server := ""
	if _, s, ok := strings.Cut(inviter, ":"); ok {
		server = strings.ToLower(s)
	}
	for _, step := range []struct {
		patterns []string
		subject  string
		isServer bool // server names are case-insensitive
		rule     InviteRule
	}{
		{c.AllowedUsers, inviter, false, InviteAllowed},
		{c.IgnoredUsers, inviter, false, InviteIgnored},
		{c.BlockedUsers, inviter, false, InviteBlocked},
		{c.AllowedServers, server, true, InviteAllowed},
		{c.IgnoredServers, server, true, InviteIgnored},
		{c.BlockedServers, server, true, InviteBlocked},
	} {
		for _, p := range step.patterns {
			if step.isServer {
				p = strings.ToLower(p)
			}
			if step.subject != "" && globMatch(p, step.subject) {
				return step.rule
			}
		}
	}
	return InviteAllowed
}

// globMatch matches s against a glob where * is any run of
// characters and ? is one character; everything else is literal.
// Spec: appendices, "Glob-style matching".
func globMatch(pattern, s string) bool {
	p, str := []rune(pattern), []rune(s)
	pi, si := 0, 0
	star, mark := -1, 0
	for si < len(str) {
		switch {
		case pi < len(p) && (p[pi] == '?' || p[pi] == str[si]):
			pi++
			si++
		case pi < len(p) && p[pi] == '*':
			star, mark = pi, si
			pi++
		case star >= 0:
			pi = star + 1
			mark++
			si = mark
		default:
			return false
		}
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}

// InviteRule returns what local user invitee's config says about an
// invite from inviter. An inviter never blocks or hides their own invite.
func (s *Server) InviteRule(ctx context.Context, inviter, invitee string) (InviteRule, error) {
	if inviter == invitee || s.localpart(invitee) == "" {
		return InviteAllowed, nil
	}
	content, err := s.GlobalAccountData(ctx, invitee, InvitePermissionConfigType)
	if err != nil {
		return InviteAllowed, err
	}
	if content == nil {
		return InviteAllowed, nil
	}
	return ParseInvitePermissionConfig(content).Rule(inviter), nil
}

// CheckInvite refuses an invite of local user invitee by inviter that the
// invitee blocks: every invite, with 403 M_INVITE_BLOCKED, when their
// m.invite_permission_config says default_action "block" (spec v1.18);
// this inviter's, with 403 M_FORBIDDEN, when their MSC4155 config blocks
// them. The federation API runs it on invites from other servers; the
// client API on local ones.
// Spec: client-server-api, "Invite permission", "Server behaviour".
func (s *Server) CheckInvite(ctx context.Context, inviter, invitee string) error {
	if inviter != invitee && s.localpart(invitee) != "" {
		stable, err := s.GlobalAccountData(ctx, invitee, StableInvitePermissionType)
		if err != nil {
			return err
		}
		if BlocksAllInvites(stable) {
			return mxerr.New(errInviteBlocked, "%s does not accept invites", invitee).WithStatus(http.StatusForbidden)
		}
	}
	rule, err := s.InviteRule(ctx, inviter, invitee)
	if err != nil {
		return err
	}
	if rule == InviteBlocked {
		return mxerr.New(mxerr.Forbidden, "%s does not accept invites from %s", invitee, inviter)
	}
	return nil
}
