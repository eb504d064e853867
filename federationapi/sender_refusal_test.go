package federationapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
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
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, f, alice, roomID := fakeDestination(t, n)
		// withEvent lists the attempts of transactions holding eventID.
		withEvent := func(eventID string) []fakeTxn {
			var out []fakeTxn
			for _, txn := range f.attempts() {
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

// TestSenderKeepsMustDeliverEDUsOfARefusedTransaction: when a
// destination refuses a transaction with a permanent 4xx, its PDUs and
// ephemeral EDUs (typing) are dropped, but its to-device, device-list
// and signing-key EDUs are sent again in a transaction of their own
// without the refused PDUs. If that EDU-only transaction is refused with
// a 4xx too, it is dropped (no loop) and the queue goes on.
// Spec: server-server-api, "PUT /_matrix/federation/v1/send/{txnId}",
// "Send-to-device messaging", "Device Management"; issue 7 (to-device and
// device-list EDUs retried until acknowledged); security case 7.
func TestSenderKeepsMustDeliverEDUsOfARefusedTransaction(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		a, f, alice, roomID := fakeDestination(t, n)
		holds := func(raws []json.RawMessage, marker string) bool {
			for _, raw := range raws {
				if strings.Contains(string(raw), marker) {
					return true
				}
			}
			return false
		}
		// withMarker lists the attempts whose PDUs or EDUs contain marker.
		withMarker := func(marker string) []fakeTxn {
			var out []fakeTxn
			for _, txn := range f.attempts() {
				if holds(txn.pdus, marker) || holds(txn.edus, marker) {
					out = append(out, txn)
				}
			}
			return out
		}
		// refuseAfterHold holds the transaction carrying the event
		// marked hold until release is closed (so that what is queued
		// meanwhile goes in one transaction), then accepts it; it
		// answers 400 to a transaction whose PDUs hold poison or whose
		// EDUs hold badEDU, 200 to the others.
		// The channel returned is closed when the held transaction has
		// arrived.
		refuseAfterHold := func(hold, poison, badEDU string, release chan struct{}) chan struct{} {
			arrived := make(chan struct{})
			var once sync.Once
			f.mu.Lock()
			defer f.mu.Unlock()
			f.txnGate = func(txn fakeTxn) int {
				switch {
				case holds(txn.pdus, hold):
					once.Do(func() { close(arrived) })
					select {
					case <-release:
					case <-time.After(30 * time.Second): // the test failed
					}
					return http.StatusOK
				case holds(txn.pdus, poison), badEDU != "" && holds(txn.edus, badEDU):
					return http.StatusBadRequest
				}
				return http.StatusOK
			}
			return arrived
		}
		queueEDU := func(eduType, marker string) {
			t.Helper()
			if err := a.HS.Federation.QueueEDU(ctx, []string{f.name}, eduType, map[string]string{"marker": marker}); err != nil {
				t.Fatal(err)
			}
		}
		queueEmpty := func() bool {
			var pdus, edus, failures int
			q := a.HS.DB.Reader()
			if err := q.QueryRow(ctx, `SELECT COUNT(*) FROM federation_queue_pdus WHERE destination = $1`, f.name).Scan(&pdus); err != nil {
				t.Fatal(err)
			}
			if err := q.QueryRow(ctx, `SELECT COUNT(*) FROM federation_queue_edus WHERE destination = $1`, f.name).Scan(&edus); err != nil {
				t.Fatal(err)
			}
			if err := q.QueryRow(ctx, `SELECT failures FROM federation_destinations WHERE server_name = $1`, f.name).Scan(&failures); err != nil {
				t.Fatal(err)
			}
			return pdus == 0 && edus == 0 && failures == 0
		}

		// queuedBehind waits until the event just sent is queued for f
		// behind the held transaction: events reach the queue through
		// the sender's fan-out, after the client's send has returned,
		// and one queued after the release would go alone.
		queuedBehind := func() {
			t.Helper()
			eventually(t, "the event to be queued behind the held transaction", func() bool {
				var n int
				if err := a.HS.DB.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM federation_queue_pdus
					WHERE destination = $1 AND txn_id IS NULL`, f.name).Scan(&n); err != nil {
					t.Fatal(err)
				}
				return n > 0
			})
		}

		// 1. A refused PDU batch: the must-deliver EDUs come through.
		release := make(chan struct{})
		arrived := refuseAfterHold("hold-1", "poison-1", "", release)
		sendText(t, a, roomID, alice, "hold-1")
		waitClosed(t, "the held transaction", arrived)
		sendText(t, a, roomID, alice, "poison-1")
		queuedBehind()
		must := map[string]string{"m.direct_to_device": "todevice-1", "m.device_list_update": "devicelist-1",
			"m.signing_key_update": "signingkey-1"}
		for eduType, marker := range must {
			queueEDU(eduType, marker)
		}
		queueEDU("m.typing", "typing-1")
		close(release)
		eventually(t, "the refused transaction and the EDUs' resend", func() bool {
			return queueEmpty() && len(withMarker("todevice-1")) >= 2
		})
		refused := withMarker("poison-1")
		if len(refused) != 1 || refused[0].status != http.StatusBadRequest {
			t.Fatalf("attempts holding the refused event answered %v; want one 400", statuses(refused))
		}
		for eduType, marker := range must {
			txns := withMarker(marker)
			if len(txns) != 2 || txns[0].id != refused[0].id || txns[1].status != http.StatusOK || len(txns[1].pdus) != 0 {
				t.Fatalf("%s: attempts holding it answered %v; want the refused transaction, then one accepted without PDUs",
					eduType, statuses(txns))
			}
		}
		if txns := withMarker("typing-1"); len(txns) != 1 || txns[0].id != refused[0].id {
			t.Fatalf("the typing EDU went in %d attempts; want only the refused transaction", len(txns))
		}

		// 2. The EDU-only resend refused too: dropped, not retried.
		release = make(chan struct{})
		arrived = refuseAfterHold("hold-2", "poison-2", "todevice-2", release)
		sendText(t, a, roomID, alice, "hold-2")
		waitClosed(t, "the second held transaction", arrived)
		sendText(t, a, roomID, alice, "poison-2")
		queuedBehind()
		queueEDU("m.direct_to_device", "todevice-2")
		close(release)
		eventually(t, "A to drop the refused EDU-only transaction", func() bool {
			return queueEmpty() && len(withMarker("todevice-2")) == 2
		})
		sendText(t, a, roomID, alice, "after-2")
		eventually(t, "the next event to be accepted", func() bool {
			txns := withMarker("after-2")
			return len(txns) > 0 && txns[len(txns)-1].status == http.StatusOK
		})
		txns := withMarker("todevice-2")
		if len(txns) != 2 || txns[0].status != http.StatusBadRequest || txns[1].status != http.StatusBadRequest ||
			len(txns[1].pdus) != 0 || txns[1].id == txns[0].id {
			t.Fatalf("attempts holding the refused to-device EDU answered %v; want the refused PDU batch, then one refused EDU-only transaction",
				statuses(txns))
		}
	})
}
