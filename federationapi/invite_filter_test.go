package federationapi_test

import (
	"context"
	"errors"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// TestClientInviteFilterAcrossServers: MSC4155 over federation. bob on B
// blocks alice's server: alice's invite fails with 403 (B refuses to sign
// it) and bob sees nothing. carol on B ignores alice: the invite succeeds
// for alice but never reaches carol's /sync. dave on B allows alice by
// name while blocking her server: his invite arrives.
func TestClientInviteFilterAcrossServers(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b := n.start(), n.start()
		ctx := context.Background()
		alice := a.register("alice")
		bob, carol, dave := b.register("bob"), b.register("carol"), b.register("dave")
		const configType = "org.matrix.msc4155.invite_permission_config"
		server := a.Name
		if err := bob.cli.SetAccountData(ctx, configType, map[string]any{"blocked_servers": []string{"localhost:*"}}); err != nil {
			t.Fatal(err)
		}
		if err := carol.cli.SetAccountData(ctx, configType, map[string]any{"ignored_users": []string{"@alice:" + server}}); err != nil {
			t.Fatal(err)
		}
		if err := dave.cli.SetAccountData(ctx, configType, map[string]any{
			"allowed_users": []string{string(alice.id())}, "blocked_servers": []string{server}}); err != nil {
			t.Fatal(err)
		}
		room := func() id.RoomID {
			created, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
			if err != nil {
				t.Fatal(err)
			}
			return created.RoomID
		}

		blockedRoom := room()
		_, err := alice.cli.InviteUser(ctx, blockedRoom, &mautrix.ReqInviteUser{UserID: bob.id()})
		var he mautrix.HTTPError
		if !errors.As(err, &he) || he.Response == nil || he.Response.StatusCode != 403 || he.RespError == nil || he.RespError.ErrCode != "M_FORBIDDEN" {
			t.Fatalf("inviting bob, who blocks alice's server: %v, want 403 M_FORBIDDEN", err)
		}
		if m, _ := a.HS.Rooms.Membership(ctx, string(blockedRoom), string(bob.id())); m != "" {
			t.Errorf("bob's membership on A after a refused invite = %q", m)
		}

		ignoredRoom := room()
		if _, err := alice.cli.InviteUser(ctx, ignoredRoom, &mautrix.ReqInviteUser{UserID: carol.id()}); err != nil {
			t.Fatalf("inviting carol, who ignores alice: %v", err)
		}
		allowedRoom := room()
		if _, err := alice.cli.InviteUser(ctx, allowedRoom, &mautrix.ReqInviteUser{UserID: dave.id()}); err != nil {
			t.Fatalf("inviting dave, who allows alice: %v", err)
		}
		dave.await("the allowed invite", func() bool { return dave.invites[allowedRoom] })
		carol.syncOnce()
		bob.syncOnce()
		if len(carol.invites) != 0 || len(bob.invites) != 0 {
			t.Errorf("invites shown: carol %v, bob %v; want none", carol.invites, bob.invites)
		}
		// carol lifts the ignore: the invite that was hidden shows up.
		if err := carol.cli.SetAccountData(ctx, configType, map[string]any{}); err != nil {
			t.Fatal(err)
		}
		carol.since = ""
		carol.await("the invite once no longer ignored", func() bool { return carol.invites[ignoredRoom] })
	})
}
