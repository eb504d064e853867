package federationapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// TestKeyRotation: B rotates its signing key (the old key file moved
// aside, its public key listed in federation_api.old_verify_keys, a
// restart creating a new key). B's key document then has only the new
// key in verify_keys, the old one in old_verify_keys with its
// expired_ts, and is signed by the new key. A server C that never saw
// the old key joins the room afterwards: the events B signed with the
// old key before the rotation verify there (C fetched the old key from
// old_verify_keys), an event signed with the old key after it expired
// does not, and one signed with the new key does.
// Spec: server-server-api, "Publishing Keys" (old_verify_keys); rooms/v5,
// "Signing key validity period".
func TestKeyRotation(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		a, b, roomID := joinedPair(t, n)
		bob := b.user("bob")
		before := sendText(t, b, roomID, bob, "signed with the old key")
		eventually(t, "A to hold bob's message", func() bool { return hasEvent(a, a.user("alice"), before) })
		beforeRaw, _, err := b.HS.Rooms.FederationEvent(ctx, before)
		if err != nil {
			t.Fatal(err)
		}

		oldKey := b.HS.Key
		b.stop()
		expired := time.Now().UnixMilli()
		time.Sleep(5 * time.Millisecond)
		if err := os.Rename(b.cfg.Global.SigningKeyPath, b.cfg.Global.SigningKeyPath+".old"); err != nil {
			t.Fatal(err)
		}
		b.cfg.Federation.OldVerifyKeys = []string{oldKey.ID + " " + oldKey.PublicBase64() + " " + strconv.FormatInt(expired, 10)}
		b.restart()
		newKey := b.HS.Key
		if newKey.ID == oldKey.ID {
			t.Fatalf("the restart kept key %s", oldKey.ID)
		}

		// B's key document.
		status, body := n.request(b, "", nil, b.Name, http.MethodGet, "/_matrix/key/v2/server", nil)
		if status != http.StatusOK {
			t.Fatalf("key/v2/server: %d %s", status, body)
		}
		var doc struct {
			VerifyKeys    map[string]json.RawMessage `json:"verify_keys"`
			OldVerifyKeys map[string]struct {
				Key       string `json:"key"`
				ExpiredTS int64  `json:"expired_ts"`
			} `json:"old_verify_keys"`
		}
		if err := json.Unmarshal(body, &doc); err != nil {
			t.Fatal(err)
		}
		if _, ok := doc.VerifyKeys[newKey.ID]; !ok || len(doc.VerifyKeys) != 1 {
			t.Errorf("verify_keys %v, want only %s", doc.VerifyKeys, newKey.ID)
		}
		if old, ok := doc.OldVerifyKeys[oldKey.ID]; !ok || old.Key != oldKey.PublicBase64() || old.ExpiredTS != expired {
			t.Errorf("old_verify_keys %+v, want %s with expired_ts %d", doc.OldVerifyKeys, oldKey.ID, expired)
		}
		if err := gomatrixserverlib.VerifyJSON(b.Name, gomatrixserverlib.KeyID(newKey.ID), newKey.Public(), body); err != nil {
			t.Errorf("key document not signed by the new key: %v", err)
		}

		// C, which never saw the old key, joins and checks signatures.
		c := n.start()
		carol := c.user("carol")
		if _, err := c.HS.Federation.JoinRemote(ctx, roomID, carol, []string{a.Name}); err != nil {
			t.Fatalf("carol joining after B's rotation: %v", err)
		}
		// The join may be partial-state; the resync brings bob's
		// membership, signed with B's old key.
		eventually(t, "C to hold bob's membership, signed with B's old key", func() bool {
			m, err := c.HS.Rooms.Membership(ctx, roomID, bob)
			return err == nil && m == "join"
		})
		if err := c.HS.Federation.VerifyPDU(ctx, beforeRaw.JSON); err != nil {
			t.Errorf("an event signed with the old key before it expired: %v", err)
		}
		late := buildPDU(t, c, roomID, bob, "m.room.message", nil, map[string]string{"body": "old key, too late"}, b.Name, oldKey, nil)
		if late.OriginServerTS() <= spec.Timestamp(expired) {
			t.Fatalf("test setup: the late event's timestamp %d is not after %d", late.OriginServerTS(), expired)
		}
		if err := c.HS.Federation.VerifyPDU(ctx, late.JSON()); err == nil {
			t.Errorf("an event signed with the old key after its expired_ts verified")
		}
		fresh := buildPDU(t, c, roomID, bob, "m.room.message", nil, map[string]string{"body": "new key"}, b.Name, newKey, nil)
		if err := c.HS.Federation.VerifyPDU(ctx, fresh.JSON()); err != nil {
			t.Errorf("an event signed with the new key: %v", err)
		}
		// Messages still flow from B after the rotation.
		after := sendText(t, b, roomID, bob, "signed with the new key")
		eventually(t, "A to hold bob's message after the rotation", func() bool { return hasEvent(a, a.user("alice"), after) })
	})
}
