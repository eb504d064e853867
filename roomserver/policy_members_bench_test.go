package roomserver

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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

// BenchmarkJoinPublicRoom is a local user's join of a public room: the
// writes of roomserver_current_state, whose joined members the server
// name index (migration 012) also holds.
func BenchmarkJoinPublicRoom(b *testing.B) {
	for _, engine := range storagetest.Engines() {
		b.Run(string(engine), func(b *testing.B) {
			db := storagetest.Open(b, engine)
			s := newTestServer(b, db)
			ctx := context.Background()
			roomID := mustCreate(b, s, CreateRoomRequest{Creator: alice, Preset: "public_chat"}).RoomID
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := s.Join(ctx, MembershipRequest{RoomID: roomID, Sender: fmt.Sprintf("@j%d:%s", i, testServer)}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// slowSigner is a fakePolicySigner that answers after delay and counts
// the requests.
type slowSigner struct {
	*fakePolicySigner
	delay time.Duration
	asks  atomic.Int64
}

func (f *slowSigner) PolicySign(ctx context.Context, server string, event json.RawMessage) (map[string]map[string]string, error) {
	f.asks.Add(1)
	time.Sleep(f.delay)
	return f.fakePolicySigner.PolicySign(ctx, server, event)
}

// BenchmarkPolicySendsOneRoom is 8 concurrent sends to one room whose
// policy server answers each request after 20 ms: the time for all 8
// and the requests made (asks/op).
func BenchmarkPolicySendsOneRoom(b *testing.B) {
	for _, engine := range storagetest.Engines() {
		b.Run(string(engine), func(b *testing.B) {
			db := storagetest.Open(b, engine)
			s := newTestServer(b, db)
			ps := &slowSigner{fakePolicySigner: newFakePolicySigner(), delay: 20 * time.Millisecond}
			s.SetPolicySigner(ps)
			ctx := context.Background()
			roomID := mustCreate(b, s, CreateRoomRequest{Creator: alice, Preset: "public_chat"}).RoomID
			if r := mustInput(b, s, remoteEvent(b, s, roomID, policyMod, "m.room.member", ptr(policyMod), `{"membership":"join"}`).JSON()); r.Outcome != Accepted {
				b.Fatalf("policy server's join: %s %s", r.Outcome, r.Reason)
			}
			mustSend(b, s, roomID, alice, "m.room.policy", ptr(""), `{"via":"`+policyServer+`","public_keys":{"ed25519":"`+ps.publicKey()+`"}}`)
			ps.asks.Store(0)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				var wg sync.WaitGroup
				for j := range 8 {
					wg.Go(func() {
						if _, err := s.SendEvent(ctx, SendEventRequest{RoomID: roomID, Sender: alice, Type: "m.room.message",
							Content: json.RawMessage(fmt.Sprintf(`{"msgtype":"m.text","body":"%d %d"}`, i, j))}); err != nil {
							b.Error(err)
						}
					})
				}
				wg.Wait()
			}
			b.ReportMetric(float64(ps.asks.Load())/float64(b.N), "asks/op")
		})
	}
}
