package federationapi_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/pgdriver"
)

// The sender's transactions are sets of queue rows, not ranges of
// positions: a row can be queued below the positions of a transaction in
// flight, and it must neither vanish with that transaction's
// acknowledgement nor slip into its retry (the receiver deduplicates by
// txnId and would drop it). Each test runs twice: the destination
// accepts the held transaction, or refuses it once and accepts the retry.
// Spec: server-server-api, "Transactions"; issue 7, "never lose an
// event".
var heldAnswers = []struct {
	name   string
	status int
}{{"accepted", http.StatusOK}, {"refused_then_retried", http.StatusInternalServerError}}

// TestSenderKeepsPDUsQueuedBelowATransactionInFlight: while A's
// transaction carrying m1 waits for F's answer, F's user dave joins
// another room of A through G, naming an older event than A's message
// m0 as prev; A queues m0 for F (a joined server's catch-up) at a lower
// position than m1. F gets m0 and m1 once each, and every txnId always
// carries the same contents.
func TestSenderKeepsPDUsQueuedBelowATransactionInFlight(t *testing.T) {
	t.Parallel()
	for _, answer := range heldAnswers {
		t.Run(answer.name, func(t *testing.T) {
			forEachEngine(t, func(t *testing.T, n *network) {
				ctx := context.Background()
				a := n.start()
				f, g := newFakeRemote(t, n), newFakeRemote(t, n)
				alice := a.user("alice")

				// Room two: G's gina in it, A's m0 a forward extremity
				// that F has never been sent.
				roomTwo := publicRoom(t, a, alice)
				ginaJoin := fakeSendJoin(t, n, a, g, roomTwo, "@gina:"+g.name)
				m0 := sendText(t, a, roomTwo, alice, "before F joined")

				// Room one: F's fred in it; A's m1 goes to F and is held.
				roomOne := publicRoom(t, a, alice)
				fakeSendJoin(t, n, a, f, roomOne, "@fred:"+f.name)
				before := len(f.attempts())
				release := make(chan struct{})
				arrived := holdFirstSend(f, answer.status, release)
				m1 := sendText(t, a, roomOne, alice, "while F's transaction is in flight")
				waitClosed(t, "A's first transaction to F", arrived)

				// G sends A dave's join into room two; its prev event is
				// gina's join, so m0 stays a forward extremity and A
				// queues it for F.
				dave := "@dave:" + f.name
				daveJoin := buildPDU(t, a, roomTwo, dave, "m.room.member", &dave, map[string]string{"membership": "join"},
					f.name, f.key, func(p *gomatrixserverlib.ProtoEvent) {
						p.PrevEvents, p.Depth = []string{ginaJoin.EventID()}, ginaJoin.Depth()+1
					})
				if status, body := n.request(a, g.name, g.key, a.Name, http.MethodPut, "/_matrix/federation/v1/send/race1",
					map[string]any{"origin": g.name, "origin_server_ts": time.Now().UnixMilli(),
						"pdus": []json.RawMessage{daveJoin.JSON()}}); status != http.StatusOK {
					t.Fatalf("G's /send: %d %s", status, body)
				}
				if m, _ := a.HS.Rooms.Membership(ctx, roomTwo, dave); m != "join" {
					t.Fatalf("dave's membership on A is %q, want join", m)
				}
				queued, err := storage.QueryColumn[int64](ctx, a.HS.DB.Reader(),
					`SELECT event_nid FROM federation_queue_pdus WHERE destination = $1 ORDER BY event_nid`, f.name)
				if err != nil {
					t.Fatal(err)
				}
				pos0, pos1 := eventPosition(t, a, m0), eventPosition(t, a, m1)
				if !slices.Equal(queued, []int64{pos0, pos1}) || pos0 >= pos1 {
					t.Fatalf("F's queue holds positions %v, want m0's %d below the in-flight m1's %d", queued, pos0, pos1)
				}
				close(release)

				eventually(t, "m0 and m1 to reach F", func() bool {
					got := receivedPDUs(t, a, f)
					return got[m0] > 0 && got[m1] > 0
				})
				if held := f.attempts()[before]; !slices.Contains(pduIDs(t, a, held.pdus), m1) {
					t.Fatalf("the held transaction %s did not carry m1", held.id)
				}
				time.Sleep(500 * time.Millisecond) // a second delivery would show
				got := receivedPDUs(t, a, f)
				for name, id := range map[string]string{"m0": m0, "m1": m1} {
					if got[id] != 1 {
						t.Errorf("%s reached F %d times, want once", name, got[id])
					}
				}
				eventually(t, "F's queue to empty", func() bool { return queueLength(t, a, f.name) == 0 })
			})
		})
	}
}

// TestSenderKeepsEDUsCommittedBelowATransactionInFlight: an EDU whose id
// is below those of A's transaction in flight appears in the queue only
// after that transaction was read. On PostgreSQL the ids come from a
// sequence, so a writer that drew its id first and committed last does
// exactly that; the test holds such a writer's transaction open. On
// SQLite (one writer, increasing ids) the test writes the row that state
// leaves, with the id given. F gets both EDUs once each, and every txnId
// always carries the same contents.
func TestSenderKeepsEDUsCommittedBelowATransactionInFlight(t *testing.T) {
	t.Parallel()
	for _, answer := range heldAnswers {
		t.Run(answer.name, func(t *testing.T) {
			forEachEngine(t, func(t *testing.T, n *network) {
				ctx := context.Background()
				a := n.start()
				f := newFakeRemote(t, n)
				queue := func(i int) {
					t.Helper()
					if err := a.HS.Federation.QueueEDU(ctx, []string{f.name}, "org.example.race", map[string]int{"i": i}); err != nil {
						t.Fatal(err)
					}
				}
				queue(0)
				eventually(t, "the first EDU to reach F", func() bool { return receivedEDUs(t, f)[0] == 1 })

				before := len(f.attempts())
				release := make(chan struct{})
				arrived := holdFirstSend(f, answer.status, release)
				late := `{"edu_type":"org.example.race","content":{"i":2}}`
				var lateID int64
				if n.engine == storage.Postgres {
					db, err := sql.Open(pgdriver.DriverName, a.cfg.Database.PostgresURL)
					if err != nil {
						t.Fatal(err)
					}
					defer db.Close()
					tx, err := db.BeginTx(ctx, nil)
					if err != nil {
						t.Fatal(err)
					}
					defer tx.Rollback() //nolint:errcheck // committed below
					if err := tx.QueryRowContext(ctx, `INSERT INTO federation_queue_edus (destination, edu, created_ts)
						VALUES ($1, $2, $3) RETURNING edu_nid`, f.name, late, time.Now().UnixMilli()).Scan(&lateID); err != nil {
						t.Fatal(err)
					}
					queue(1)
					waitClosed(t, "A's transaction to F", arrived)
					if err := tx.Commit(); err != nil {
						t.Fatal(err)
					}
				} else {
					queue(1)
					waitClosed(t, "A's transaction to F", arrived)
					if err := a.HS.DB.Reader().QueryRow(ctx, `SELECT MIN(edu_nid) - 1 FROM federation_queue_edus`).Scan(&lateID); err != nil {
						t.Fatal(err)
					}
					if err := a.HS.DB.Write(ctx, func(tx storage.Tx) error {
						_, err := tx.Exec(ctx, `INSERT INTO federation_queue_edus (edu_nid, destination, edu, created_ts) VALUES ($1, $2, $3, $4)`,
							lateID, f.name, late, time.Now().UnixMilli())
						return err
					}); err != nil {
						t.Fatal(err)
					}
				}
				ids, err := storage.QueryColumn[int64](ctx, a.HS.DB.Reader(),
					`SELECT edu_nid FROM federation_queue_edus WHERE destination = $1 ORDER BY edu_nid`, f.name)
				if err != nil {
					t.Fatal(err)
				}
				if len(ids) != 2 || ids[0] != lateID {
					t.Fatalf("F's EDU queue holds ids %v, want the late %d below the in-flight one", ids, lateID)
				}
				close(release)

				eventually(t, "both EDUs to reach F", func() bool {
					got := receivedEDUs(t, f)
					return got[1] > 0 && got[2] > 0
				})
				if held := f.attempts()[before]; len(held.edus) != 1 {
					t.Fatalf("the held transaction %s carried %d EDUs, want the second one only", held.id, len(held.edus))
				}
				time.Sleep(500 * time.Millisecond) // a second delivery would show
				for i, count := range receivedEDUs(t, f) {
					if count != 1 {
						t.Errorf("EDU %d reached F %d times, want once", i, count)
					}
				}
				eventually(t, "F's queue to empty", func() bool { return queueLength(t, a, f.name) == 0 })
			})
		})
	}
}

// fakeDestination starts server A and a fake remote F, and makes a
// public room of alice on A that @charlie of F joins through send_join:
// every event of the room is then for F, whose /send attempts
// (f.attempts) and answers (f.sendGate, f.txnGate) the test controls.
func fakeDestination(t *testing.T, n *network) (a *fedServer, f *fakeRemote, alice, roomID string) {
	t.Helper()
	a = n.start()
	f = newFakeRemote(t, n)
	alice = a.user("alice")
	roomID = publicRoom(t, a, alice)
	fakeSendJoin(t, n, a, f, roomID, "@charlie:"+f.name)
	return a, f, alice, roomID
}

// fakeSendJoin joins user of fake remote f to roomID on s through
// send_join and returns the join.
func fakeSendJoin(t *testing.T, n *network, s *fedServer, f *fakeRemote, roomID, user string) gomatrixserverlib.PDU {
	t.Helper()
	join := buildPDU(t, s, roomID, user, "m.room.member", &user, map[string]string{"membership": "join"}, f.name, f.key, nil)
	if status, body := n.request(s, f.name, f.key, s.Name, http.MethodPut,
		"/_matrix/federation/v2/send_join/"+pathEscape(roomID)+"/"+pathEscape(join.EventID()), json.RawMessage(join.JSON())); status != http.StatusOK {
		t.Fatalf("send_join of %s: %d %s", user, status, body)
	}
	return join
}

// holdFirstSend makes f's next /send wait until release is closed and
// then answer status; later ones are accepted. The channel returned is
// closed when the held /send has arrived.
func holdFirstSend(f *fakeRemote, status int, release <-chan struct{}) <-chan struct{} {
	arrived := make(chan struct{})
	var once sync.Once
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sendGate = func(r *http.Request) int {
		held := false
		once.Do(func() { held = true })
		if !held {
			return http.StatusOK
		}
		close(arrived)
		select {
		case <-release:
		case <-r.Context().Done():
		}
		return status
	}
	return arrived
}

func waitClosed(t *testing.T, what string, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(20 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

func (f *fakeRemote) attempts() []fakeTxn {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.txns)
}

// processedTxns returns the /send attempts a receiver processes: the
// first accepted attempt of each txnId (it answers a retry of one from
// its record). It fails t if a txnId was ever sent with other contents.
func processedTxns(t *testing.T, f *fakeRemote) []fakeTxn {
	t.Helper()
	first := map[string]fakeTxn{}
	accepted := map[string]bool{}
	var out []fakeTxn
	for _, txn := range f.attempts() {
		if prev, ok := first[txn.id]; ok {
			if !sameRaw(prev.pdus, txn.pdus) || !sameRaw(prev.edus, txn.edus) {
				t.Fatalf("transaction %s sent again with other contents: %d PDUs and %d EDUs, then %d and %d",
					txn.id, len(prev.pdus), len(prev.edus), len(txn.pdus), len(txn.edus))
			}
		} else {
			first[txn.id] = txn
		}
		if txn.status == http.StatusOK && !accepted[txn.id] {
			accepted[txn.id] = true
			out = append(out, txn)
		}
	}
	return out
}

// receivedPDUs counts the events f processed, by event ID.
func receivedPDUs(t *testing.T, s *fedServer, f *fakeRemote) map[string]int {
	t.Helper()
	got := map[string]int{}
	for _, txn := range processedTxns(t, f) {
		for _, id := range pduIDs(t, s, txn.pdus) {
			got[id]++
		}
	}
	return got
}

func pduIDs(t *testing.T, s *fedServer, pdus []json.RawMessage) []string {
	t.Helper()
	var ids []string
	for _, raw := range pdus {
		ids = append(ids, string(eventIDOf(t, s, raw)))
	}
	return ids
}

// receivedEDUs counts the org.example.race EDUs f processed, by i.
func receivedEDUs(t *testing.T, f *fakeRemote) map[int]int {
	t.Helper()
	got := map[int]int{}
	for _, txn := range processedTxns(t, f) {
		for _, raw := range txn.edus {
			var edu struct {
				Type    string `json:"edu_type"`
				Content struct {
					I int `json:"i"`
				} `json:"content"`
			}
			if json.Unmarshal(raw, &edu) == nil && edu.Type == "org.example.race" {
				got[edu.Content.I]++
			}
		}
	}
	return got
}

func eventPosition(t *testing.T, s *fedServer, eventID string) int64 {
	t.Helper()
	var pos int64
	if err := s.HS.DB.Reader().QueryRow(context.Background(), `SELECT event_nid FROM roomserver_events WHERE event_id = $1`,
		eventID).Scan(&pos); err != nil {
		t.Fatal(err)
	}
	return pos
}

func queueLength(t *testing.T, s *fedServer, destination string) int {
	t.Helper()
	var count int
	if err := s.HS.DB.Reader().QueryRow(context.Background(), `SELECT (SELECT COUNT(*) FROM federation_queue_pdus WHERE destination = $1)
		+ (SELECT COUNT(*) FROM federation_queue_edus WHERE destination = $1)`, destination).Scan(&count); err != nil {
		t.Fatal(err)
	}
	return count
}
