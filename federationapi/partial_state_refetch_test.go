package federationapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
)

// rejoinAfterPurge purges p's partial state and has bob join again,
// answered with the full state; it returns alice's message after it.
func rejoinAfterPurge(t *testing.T, p *partialStretch) string {
	t.Helper()
	ctx := context.Background()
	p.purge(t)
	p.a.HS.Federation.ServeFullStateJoins(true)
	if _, err := p.bob.cli.JoinRoom(ctx, string(p.roomID), &mautrix.ReqJoinRoom{Via: []string{p.a.Name}}); err != nil {
		t.Fatalf("bob joining again: %v", err)
	}
	later := p.alice.send(p.roomID, "after bob's return").String()
	eventually(t, "B to get alice's message", func() bool { return hasEvent(p.b, string(p.bob.id()), later) })
	return later
}

// TestStretchStateRefetchRefusesALie: after bob's rejoin, A's merge of
// bob's leave (of a purged stretch of partial state) and a later event
// reaches B, which asks a third server for the state at bob's leave.
// That server answers with the state A gives there less bob's own
// membership: a state that does not allow bob's leave, which B holds and
// accepted, so it is not the state at it. B refuses it: the merge keeps
// its mark and A's /state and /state_ids at it stay refused (403).
// Spec: server-server-api, "Checks performed on receipt of a PDU";
// MSC3706.
func TestStretchStateRefetchRefusesALie(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b := n.start(), n.start()
		p := leftWhilePartial(t, n, a, b, unnamedPublicRoom(t))
		bobID := string(p.bob.id())
		// The liar relays A's answers to B, less bob's membership in
		// state_ids.
		var mu sync.Mutex
		asked := map[string]int{}
		relay := func(uri string) (int, []byte) {
			return n.request(a, b.Name, b.HS.Key, a.Name, http.MethodGet, uri, nil)
		}
		liar, _ := n.fakeServer(t, func(_ string, mux *http.ServeMux) {
			mux.HandleFunc("/_matrix/federation/v1/state_ids/", func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				asked["state_ids"]++
				mu.Unlock()
				status, raw := relay(r.URL.RequestURI())
				var body struct {
					PDUIDs       []string `json:"pdu_ids"`
					AuthChainIDs []string `json:"auth_chain_ids"`
				}
				if status != http.StatusOK || json.Unmarshal(raw, &body) != nil {
					w.WriteHeader(http.StatusBadGateway)
					return
				}
				body.PDUIDs = slices.DeleteFunc(body.PDUIDs, func(id string) bool {
					_, ev := relay("/_matrix/federation/v1/event/" + pathEscape(id))
					return strings.Contains(string(ev), `"state_key":"`+bobID+`"`)
				})
				_, _ = w.Write(mustJSON(body))
			})
			mux.HandleFunc("/_matrix/federation/v1/event/", func(w http.ResponseWriter, r *http.Request) {
				status, raw := relay(r.URL.RequestURI())
				w.WriteHeader(status)
				_, _ = w.Write(raw)
			})
		})
		type outcome struct {
			eventID string
			err     error
		}
		outcomes := make(chan outcome, 64)
		released := make(chan struct{})
		close(released)
		b.HS.Federation.HoldStretchRefetches(released, func(id string, err error) {
			select {
			case outcomes <- outcome{id, err}:
			default: // the test is past listening
			}
		},
			func(string) []string { return []string{liar} })

		later := rejoinAfterPurge(t, p)
		fork := forkOnLeave(t, p, later)
		// B asks the liar for the state at bob's leave for the event
		// built on it and for the merge, and refuses both answers. (The
		// event built on the first waits for it: its state is never
		// fetched.)
		lied := map[string]bool{fork.onStretch.EventID(): true, fork.merge.EventID(): true}
		deadline := time.After(30 * time.Second)
		for len(lied) > 0 {
			select {
			case o := <-outcomes:
				if !lied[o.eventID] {
					continue
				}
				delete(lied, o.eventID)
				if o.err == nil {
					t.Fatalf("B took the liar's state at bob's leave for %s", o.eventID)
				}
				if !strings.Contains(o.err.Error(), "does not hold its auth event") && !strings.Contains(o.err.Error(), "does not allow") {
					t.Errorf("B refused the liar's state for another reason: %v", o.err)
				}
			case <-deadline:
				t.Fatalf("B did not ask the liar for the state at bob's leave for %v", lied)
			}
		}
		mu.Lock()
		if asked["state_ids"] == 0 {
			t.Error("the liar was never asked /state_ids")
		}
		mu.Unlock()
		p.refused(t, "alice's merge, after a lie about the state at bob's leave", fork.merge.EventID())
		p.refused(t, "alice's event built on the stretch, after a lie", fork.onStretch.EventID())
		p.refused(t, "bob's leave of the purged stretch", p.leave)
	})
}

// TestStretchMarkAfterRestart: after a purge and a full rejoin, B
// restarts; an event of A built on bob's leave (of the purged stretch)
// reaching the restarted B is still recorded as built on partial state
// — the knowledge that the room has a stretch is read again after the
// restart, never assumed absent — so A's /state_ids at it is refused
// until B has fetched the state at the leave again, then served.
// Spec: MSC3706.
func TestStretchMarkAfterRestart(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b := n.start(), n.start()
		p := leftWhilePartial(t, n, a, b, unnamedPublicRoom(t))
		later := rejoinAfterPurge(t, p)
		b.restart()
		refetch := make(chan struct{})
		b.HS.Federation.HoldStretchRefetches(refetch, nil, nil)
		fork := forkOnLeave(t, p, later)
		p.refused(t, "alice's event built on the stretch, after a restart", fork.onStretch.EventID())
		p.refused(t, "alice's merge, after a restart", fork.merge.EventID())
		p.served(t, "alice's message after the rejoin", later)
		close(refetch)
		eventually(t, "B to serve the state at alice's merge", func() bool {
			ok, _, _ := p.servedNow(t, fork.merge.EventID())
			return ok
		})
		p.served(t, "alice's merge, after the refetch", fork.merge.EventID())
		p.served(t, "alice's event built on the stretch, after the refetch", fork.onStretch.EventID())
	})
}

// TestStretchRefetchWakesUp: the worker that completes the state of
// events built on a stretch of partial state does not poll its queue. An
// event queued on B (alice's events built on bob's leave, after bob's
// rejoin) wakes it: B completes their state at once, and serves the
// state at them, within a second of storing them (the worker used to
// look every 2 s). Once the queue is empty, B reads nothing of it while
// idle.
// Spec: MSC3706.
func TestStretchRefetchWakesUp(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b := n.start(), n.start()
		p := leftWhilePartial(t, n, a, b, unnamedPublicRoom(t))
		later := rejoinAfterPurge(t, p)
		var mu sync.Mutex
		var firstTry time.Time
		b.HS.Federation.ObserveStretchRefetches(func(string) {
			mu.Lock()
			defer mu.Unlock()
			if firstTry.IsZero() {
				firstTry = time.Now()
			}
		})
		fork := forkOnLeave(t, p, later)
		stored := time.Now() // B holds the three events (queued as they were stored)
		// The merge (built on bob's leave and the rejoin) and alice's event
		// on the stretch are completed by separate attempts, whose order
		// the test does not fix: wait for both.
		for _, w := range []struct{ what, id string }{
			{"alice's merge", fork.merge.EventID()},
			{"alice's event built on the stretch", fork.onStretch.EventID()},
		} {
			eventually(t, "B to serve the state at "+w.what, func() bool {
				ok, _, _ := p.servedNow(t, w.id)
				return ok
			})
			p.served(t, w.what, w.id)
		}
		mu.Lock()
		tried := firstTry
		mu.Unlock()
		if tried.IsZero() {
			t.Fatal("the worker made no attempt")
		}
		// Unwoken, the worker would sleep until a restart (the served
		// checks above then time out), and a worker that polls shows in
		// the idle reads below; this bound is for a wake that lags, with
		// room for a loaded machine.
		if lag := tried.Sub(stored); lag > 5*time.Second {
			t.Errorf("the first attempt started %v after B stored the events; want it woken at once", lag)
		}

		// The worker's last pass (its read of the emptied queue, and one
		// more for a wake-up kept while it worked) may still be under way
		// on a loaded machine: idle is from when the reads stop.
		idle := b.HS.Federation.StretchQueueReads()
		deadline := time.Now().Add(20 * time.Second)
		for stable := time.Now(); time.Since(stable) < 1500*time.Millisecond; time.Sleep(10 * time.Millisecond) {
			if now := b.HS.Federation.StretchQueueReads(); now != idle {
				idle, stable = now, time.Now()
			}
			if time.Now().After(deadline) {
				t.Fatal("B kept reading its stretch refetch queue for 20 s after the last event was served")
			}
		}
		time.Sleep(2500 * time.Millisecond)
		if reads := b.HS.Federation.StretchQueueReads() - idle; reads != 0 {
			t.Errorf("B read its empty stretch refetch queue %d times in 2.5 s while idle; want none", reads)
		}
	})
}
