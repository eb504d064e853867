package federationapi_test

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// TestClientRemoteNetworkDirectory: an application service on A publishes
// a room in its network's directory; from B, A's directory lists it for
// that network instance and with all networks, and not otherwise, by GET
// and by POST with a filter; an instance A does not know is refused.
// Spec: server-server-api, "GET /_matrix/federation/v1/publicRooms" and
// "POST /_matrix/federation/v1/publicRooms" (include_all_networks,
// third_party_instance_id); client-server-api, "PUT
// /_matrix/client/v3/directory/list/appservice/{networkId}/{roomId}".
func TestClientRemoteNetworkDirectory(t *testing.T) {
	t.Parallel()
	n := newNetwork(t, "sqlite")
	cfg, ln := n.newConfig()
	reg := filepath.Join(t.TempDir(), "irc.yaml")
	if err := os.WriteFile(reg, []byte(`id: irc
url: null
as_token: irc-as-token
hs_token: irc-hs-token
sender_localpart: irc_bot
protocols: [irc]
namespaces: {}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.AppService.ConfigFiles = []string{reg}
	a := n.startWith(cfg, ln)
	b := n.start()
	alice, bob := a.register("alice"), b.register("bob")
	ctx := context.Background()
	ordinary := alice.publicAliasedRoom("ordinary")
	bridged, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "bridged"})
	if err != nil {
		t.Fatal(err)
	}
	service, err := mautrix.NewClient("https://"+a.Name, "", "irc-as-token")
	if err != nil {
		t.Fatal(err)
	}
	service.Client = n.httpClient()
	publish := service.BuildClientURL("v3", "directory", "list", "appservice", "freenode", bridged.RoomID)
	if _, err := service.MakeRequest(ctx, http.MethodPut, publish, map[string]string{"visibility": "public"}, nil); err != nil {
		t.Fatalf("the service publishing in its network: %v", err)
	}
	ids := func(list *mautrix.RespPublicRooms) []id.RoomID {
		var out []id.RoomID
		for _, r := range list.Chunk {
			out = append(out, r.RoomID)
		}
		slices.Sort(out)
		return out
	}
	sorted := func(rooms ...id.RoomID) []id.RoomID {
		slices.Sort(rooms)
		return rooms
	}
	for _, c := range []struct {
		req  mautrix.ReqPublicRooms
		want []id.RoomID
	}{
		{mautrix.ReqPublicRooms{}, sorted(ordinary)},
		{mautrix.ReqPublicRooms{ThirdPartyInstanceID: "irc|freenode"}, sorted(bridged.RoomID)},
		{mautrix.ReqPublicRooms{IncludeAllNetworks: true}, sorted(ordinary, bridged.RoomID)},
	} {
		c.req.Server = a.Name
		list, err := bob.cli.PublicRooms(ctx, &c.req)
		if err != nil || !slices.Equal(ids(list), c.want) {
			t.Fatalf("GET A's public rooms from B %+v: %v, %v; want %v", c.req, list, err, c.want)
		}
	}
	// POST with a search term goes to A by POST, the network with it.
	var list mautrix.RespPublicRooms
	post := bob.cli.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "publicRooms"}, map[string]string{"server": a.Name})
	if _, err := bob.cli.MakeRequest(ctx, http.MethodPost, post, map[string]any{
		"filter": map[string]string{"generic_search_term": "bridged"}, "third_party_instance_id": "irc|freenode"}, &list); err != nil || !slices.Equal(ids(&list), []id.RoomID{bridged.RoomID}) {
		t.Fatalf("POST A's public rooms of the network from B: %+v, %v", list, err)
	}
	// A's answer to an instance it does not know comes back to B's client.
	_, err = bob.cli.PublicRooms(ctx, &mautrix.ReqPublicRooms{Server: a.Name, ThirdPartyInstanceID: "nosuch|freenode"})
	if !httpStatusIs(err, http.StatusBadRequest) || !errors.Is(err, mautrix.MInvalidParam) {
		t.Fatalf("an instance A does not know: %v, want 400 M_INVALID_PARAM", err)
	}
}
