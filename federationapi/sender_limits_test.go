package federationapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"testing"
)

// TestSenderTransactionLimitsAndRetries drives the federation sender
// against a fake remote server that is in a room of A.
//
//   - While the remote answers 500, A retries the same transaction (same
//     txnId, same PDUs and EDUs) after backing off.
//   - Once it accepts, 120 events and 230 EDUs queued meanwhile arrive in
//     transactions of at most 50 PDUs and 100 EDUs (the limits are used:
//     some transaction is full), each event once, the EDUs in the order
//     they were queued.
//   - A restart of A while a transaction is in flight (sent, unanswered)
//     sends the same transaction again, txnId included, so the receiver
//     can deduplicate it (TestDuplicateTransaction shows it does).
//
// Spec: server-server-api, "Transactions"; issue 7, "The federation
// sender".
func TestSenderTransactionLimitsAndRetries(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		a, f, alice, roomID := fakeDestination(t, n)
		setGate := func(gate func(*http.Request) int) {
			f.mu.Lock()
			f.sendGate = gate
			f.mu.Unlock()
		}
		setGate(func(*http.Request) int { return http.StatusInternalServerError })

		const nEvents, nEDUs = 120, 230
		var events []string
		for i := 0; i < nEvents; i++ {
			events = append(events, sendText(t, a, roomID, alice, "queued"))
		}
		for i := 0; i < nEDUs; i++ {
			if err := a.HS.Federation.QueueEDU(ctx, []string{f.name}, "org.example.test", map[string]int{"i": i}); err != nil {
				t.Fatal(err)
			}
		}
		// A refused transaction is tried again unchanged.
		var refused []fakeTxn
		eventually(t, "two attempts of one refused transaction", func() bool {
			refused = f.attempts()
			last := len(refused) - 1
			return last >= 1 && refused[last].id == refused[last-1].id
		})
		last := len(refused) - 1
		if !sameRaw(refused[last].pdus, refused[last-1].pdus) || !sameRaw(refused[last].edus, refused[last-1].edus) {
			t.Fatalf("retry of %s changed its contents: %d/%d PDUs, %d/%d EDUs", refused[last].id,
				len(refused[last-1].pdus), len(refused[last].pdus), len(refused[last-1].edus), len(refused[last].edus))
		}

		// Accepted: everything arrives within the limits.
		setGate(nil)
		got := map[string]int{}
		var eduOrder []int
		var full bool
		collect := func() {
			got, eduOrder, full = map[string]int{}, nil, false
			for _, txn := range f.attempts() {
				if len(txn.pdus) > 50 || len(txn.edus) > 100 {
					t.Fatalf("transaction %s holds %d PDUs and %d EDUs (at most 50 and 100)", txn.id, len(txn.pdus), len(txn.edus))
				}
				if txn.status != http.StatusOK {
					continue
				}
				full = full || len(txn.pdus) == 50 || len(txn.edus) == 100
				for _, raw := range txn.pdus {
					var ev struct {
						Type string `json:"type"`
					}
					_ = json.Unmarshal(raw, &ev)
					if ev.Type == "m.room.message" {
						got[string(eventIDOf(t, a, raw))]++
					}
				}
				for _, raw := range txn.edus {
					var edu struct {
						Type    string `json:"edu_type"`
						Content struct {
							I int `json:"i"`
						} `json:"content"`
					}
					if json.Unmarshal(raw, &edu) == nil && edu.Type == "org.example.test" {
						eduOrder = append(eduOrder, edu.Content.I)
					}
				}
			}
		}
		eventually(t, "every event and EDU to arrive", func() bool {
			collect()
			return len(got) == nEvents && len(eduOrder) >= nEDUs
		})
		for _, id := range events {
			if got[id] != 1 {
				t.Errorf("event %s delivered %d times", id, got[id])
			}
		}
		for i, v := range eduOrder {
			if v != i {
				t.Fatalf("EDUs delivered in the order %v, want 0..%d once each", eduOrder, nEDUs-1)
			}
		}
		if !full {
			t.Errorf("no transaction used a limit (50 PDUs or 100 EDUs) although %d events and %d EDUs were queued", nEvents, nEDUs)
		}

		// Restart mid-send: the transaction in flight is sent again.
		inFlight := make(chan string, 1)
		setGate(func(r *http.Request) int {
			select {
			case inFlight <- r.URL.EscapedPath():
			default:
			}
			<-r.Context().Done() // never answered: A goes down first
			return http.StatusServiceUnavailable
		})
		before := len(f.attempts())
		lastWord := sendText(t, a, roomID, alice, "sent as A goes down")
		<-inFlight
		// A goes down with the transaction unanswered (stopping ends the
		// request, which the fake then records), and comes back.
		setGate(nil)
		a.restart()
		var hung fakeTxn
		eventually(t, "the unanswered attempt to be recorded", func() bool {
			for _, txn := range f.attempts()[before:] {
				if txn.status == http.StatusServiceUnavailable {
					hung = txn
					return true
				}
			}
			return false
		})
		eventually(t, "the in-flight transaction to be sent again after the restart", func() bool {
			for _, txn := range f.attempts()[before+1:] {
				if txn.status == http.StatusOK && txn.id == hung.id {
					return true
				}
			}
			return false
		})
		for _, txn := range f.attempts()[before+1:] {
			if txn.id == hung.id && !sameRaw(txn.pdus, hung.pdus) {
				t.Fatalf("transaction %s resent with other PDUs after the restart", txn.id)
			}
		}
		if len(hung.pdus) == 0 || string(eventIDOf(t, a, hung.pdus[len(hung.pdus)-1])) != lastWord {
			t.Fatalf("the in-flight transaction did not carry the last event")
		}
	})
}

func sameRaw(a, b []json.RawMessage) bool {
	return slices.EqualFunc(a, b, func(x, y json.RawMessage) bool { return string(x) == string(y) })
}
