package federationapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"testing"
)

// TestSenderRefusalsByStatus: how A's federation sender treats a
// destination's non-200 answers to a transaction (sender.go, record).
// 408 Request Timeout and 425 Too Early are transient: the same
// transaction (same txnId, same PDUs) is sent again until accepted. A
// 400 refuses the transaction's very bytes: it is dropped, not retried,
// the destination is not marked down (no backoff), and its queue goes on
// with the next event in a new transaction.
// Spec: server-server-api, "PUT /_matrix/federation/v1/send/{txnId}"
// (retry until a 200 before another txnId); security case 7 (a refused
// transaction never wedges the queue).
func TestSenderRefusalsByStatus(t *testing.T) {
	forEachEngine(t, func(t *testing.T, n *network) {
		a := n.start()
		f := newFakeRemote(t, n)
		alice := a.user("alice")
		charlie := "@charlie:" + f.name
		roomID := publicRoom(t, a, alice)
		join := buildPDU(t, a, roomID, charlie, "m.room.member", &charlie, map[string]string{"membership": "join"}, f.name, f.key, nil)
		if status, body := n.request(a, f.name, f.key, a.Name, http.MethodPut,
			"/_matrix/federation/v2/send_join/"+pathEscape(roomID)+"/"+pathEscape(join.EventID()), json.RawMessage(join.JSON())); status != http.StatusOK {
			t.Fatalf("send_join: %d %s", status, body)
		}
		attempts := func() []fakeTxn {
			f.mu.Lock()
			defer f.mu.Unlock()
			return slices.Clone(f.txns)
		}
		// withEvent lists the attempts of transactions holding eventID.
		withEvent := func(eventID string) []fakeTxn {
			var out []fakeTxn
			for _, txn := range attempts() {
				for _, raw := range txn.pdus {
					if string(eventIDOf(t, a, raw)) == eventID {
						out = append(out, txn)
					}
				}
			}
			return out
		}
		// refuseFirst answers status to the first attempt of each
		// transaction, 200 to the later ones.
		refuseFirst := func(status int) {
			seen := map[string]bool{}
			f.mu.Lock()
			f.sendGate = func(r *http.Request) int {
				f.mu.Lock()
				defer f.mu.Unlock()
				if seen[r.URL.EscapedPath()] {
					return http.StatusOK
				}
				seen[r.URL.EscapedPath()] = true
				return status
			}
			f.mu.Unlock()
		}
		for _, status := range []int{http.StatusRequestTimeout, http.StatusTooEarly} {
			refuseFirst(status)
			ev := sendText(t, a, roomID, alice, "first refused with "+http.StatusText(status))
			eventually(t, "the event to be accepted after a "+http.StatusText(status), func() bool {
				txns := withEvent(ev)
				return len(txns) > 0 && txns[len(txns)-1].status == http.StatusOK
			})
			txns := withEvent(ev)
			if len(txns) != 2 || txns[0].status != status {
				t.Fatalf("%d: attempts holding the event answered %v; want one refused, then the retry", status, statuses(txns))
			}
			if txns[1].id != txns[0].id || !sameRaw(txns[1].pdus, txns[0].pdus) {
				t.Fatalf("%d: the retry is transaction %s with %d PDUs, the refused one %s with %d; want it unchanged",
					status, txns[1].id, len(txns[1].pdus), txns[0].id, len(txns[0].pdus))
			}
		}

		// 400: dropped; the next event goes through in a new transaction.
		refuseFirst(http.StatusBadRequest)
		dropped := sendText(t, a, roomID, alice, "refused with 400")
		eventually(t, "the 400 answer", func() bool { return len(withEvent(dropped)) == 1 })
		// Dropped, and the destination not marked down (no backoff).
		eventually(t, "A to drop the refused transaction without backing off", func() bool {
			var rows, failures int
			q := a.HS.DB.Reader()
			if err := q.QueryRow(context.Background(), `SELECT COUNT(*) FROM federation_queue_pdus WHERE destination = $1`,
				f.name).Scan(&rows); err != nil {
				t.Fatal(err)
			}
			if err := q.QueryRow(context.Background(), `SELECT failures FROM federation_destinations WHERE server_name = $1`,
				f.name).Scan(&failures); err != nil {
				t.Fatal(err)
			}
			return rows == 0 && failures == 0
		})
		f.mu.Lock()
		f.sendGate = nil
		f.mu.Unlock()
		next := sendText(t, a, roomID, alice, "after the refused one")
		eventually(t, "the next event to be accepted", func() bool {
			txns := withEvent(next)
			return len(txns) > 0 && txns[len(txns)-1].status == http.StatusOK
		})
		refusedTxns, nextTxns := withEvent(dropped), withEvent(next)
		if len(refusedTxns) != 1 || refusedTxns[0].status != http.StatusBadRequest {
			t.Fatalf("attempts holding the refused event answered %v; want one 400, never retried", statuses(refusedTxns))
		}
		if nextTxns[0].id == refusedTxns[0].id {
			t.Fatalf("the next event went in the refused transaction %s", nextTxns[0].id)
		}
	})
}

func statuses(txns []fakeTxn) []int {
	out := make([]int, len(txns))
	for i, txn := range txns {
		out[i] = txn.status
	}
	return out
}
