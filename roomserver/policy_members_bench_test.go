package roomserver

import (
	"context"
	"fmt"
	"testing"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// BenchmarkPolicyOfManyMembers is what finding a room's policy server
// costs an event of a room with 20,000 joined members of 1,000 servers:
// the m.room.policy entry comes from the snapshot key cache, the policy
// server's joined member from the current state.
func BenchmarkPolicyOfManyMembers(b *testing.B) {
	for _, engine := range storagetest.Engines() {
		b.Run(string(engine), func(b *testing.B) {
			db := storagetest.Open(b, engine)
			s := newTestServer(b, db)
			ps := newFakePolicySigner()
			s.SetPolicySigner(ps)
			ctx := context.Background()
			roomID := mustCreate(b, s, CreateRoomRequest{Creator: alice, Preset: "public_chat"}).RoomID
			if r := mustInput(b, s, remoteEvent(b, s, roomID, policyMod, "m.room.member", ptr(policyMod), `{"membership":"join"}`).JSON()); r.Outcome != Accepted {
				b.Fatalf("policy server's join: %s %s", r.Outcome, r.Reason)
			}
			mustSend(b, s, roomID, alice, "m.room.policy", ptr(""), `{"via":"`+policyServer+`","public_keys":{"ed25519":"`+ps.publicKey()+`"}}`)
			// The other members, written straight into the current
			// state (the lookup reads nothing else).
			if err := db.Write(ctx, func(tx storage.Tx) error {
				for i := range 20000 {
					user := fmt.Sprintf("@user%d:server%d.example", i, i%1000)
					if _, err := tx.Exec(ctx, `INSERT INTO roomserver_current_state (room_id, type, state_key, event_nid, event_id, membership)
						VALUES ($1, 'm.room.member', $2, $3, $4, 'join')`, roomID, user, 1000000+i, "$fake"+user); err != nil {
						return err
					}
				}
				return nil
			}); err != nil {
				b.Fatal(err)
			}
			room, err := loadRoom(ctx, db.Reader(), roomID)
			if err != nil {
				b.Fatal(err)
			}
			if pol, err := s.policyOf(ctx, db.Reader(), nil, room); err != nil || pol == nil {
				b.Fatal("the room uses no policy server", err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if pol, err := s.policyOf(ctx, db.Reader(), nil, room); err != nil || pol == nil {
					b.Fatal(pol, err)
				}
			}
		})
	}
}
