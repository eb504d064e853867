package federationapi_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/homeserver"
	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/storage"
)

// splitServer starts server B as two processes of one split deployment:
// b is served (other servers reach it), other runs every component too,
// on the same PostgreSQL schema, signing key and Redis, unserved. Only
// B's processes use Redis, under a prefix of their own. other starts
// first, so it holds the leases of the singletons (internal/lease): the
// federation sender, resyncs and stretch refetches run there, and b
// stands by. The test is skipped without MYELIN_TEST_REDIS; n must be a
// PostgreSQL network.
func splitServer(t *testing.T, n *network) (b *fedServer, other *homeserver.Homeserver) {
	t.Helper()
	useRedis := testserver.UseRedis(t)
	edit := n.editEachConfig
	n.editEachConfig = func(c *config.Config) {
		if edit != nil {
			edit(c)
		}
		useRedis(c)
	}
	cfg, ln := n.newConfig()
	n.editEachConfig = edit
	otherCfg := cfg
	hs, err := homeserver.New(context.Background(), &otherCfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("starting B's second process: %v", err)
	}
	t.Cleanup(func() { hs.Close() })
	b = n.startWith(cfg, ln)
	return b, hs
}

// postgresNetwork returns a PostgreSQL network, or skips the test.
func postgresNetwork(t *testing.T) *network {
	t.Helper()
	if os.Getenv("MYELIN_TEST_POSTGRES") == "" {
		t.Skip("split-mode test skipped: it needs PostgreSQL shared by two processes; set MYELIN_TEST_POSTGRES")
	}
	return newNetwork(t, storage.Postgres)
}

// TestSplitModeStretchRefetchWakesOtherProcess: B runs as two processes.
// The one that receives A's events queues those built on a stretch of
// partial state (as in TestStretchRefetchWakesUp), while its own worker
// is held (it stands by anyway: the other holds the federation lease);
// the other process's worker, idle since its start (the queue
// was empty), must be woken through Redis and complete their state: its
// first attempt comes within 2 s of the queueing, and B then serves
// the state at alice's merge. Before, only the queueing process's worker
// was woken; the other slept until a retry it did not know of.
func TestSplitModeStretchRefetchWakesOtherProcess(t *testing.T) {
	t.Parallel()
	n := postgresNetwork(t)
	a := n.start()
	b, other := splitServer(t, n)
	// The resyncs run in the other process (it holds the federation
	// lease): it holds them as leftWhilePartial holds B's.
	holdOther := make(chan struct{})
	other.Federation.HoldResyncs(holdOther)
	p := leftWhilePartial(t, n, a, b, unnamedPublicRoom(t))
	releaseB := p.releaseHeld
	var once sync.Once
	p.releaseHeld = func() {
		releaseB()
		once.Do(func() { close(holdOther) })
	}
	t.Cleanup(p.releaseHeld)
	later := rejoinAfterPurge(t, p)

	never := make(chan struct{})
	b.HS.Federation.HoldStretchRefetches(never, nil, nil)
	var mu sync.Mutex
	var firstTry time.Time
	other.Federation.ObserveStretchRefetches(func(string) {
		mu.Lock()
		defer mu.Unlock()
		if firstTry.IsZero() {
			firstTry = time.Now()
		}
	})
	fork := forkOnLeave(t, p, later)
	stored := time.Now()
	eventually(t, "B to serve the state at alice's merge", func() bool {
		ok, _, _ := p.servedNow(t, fork.merge.EventID())
		return ok
	})
	p.served(t, "alice's event built on the stretch", fork.onStretch.EventID())
	mu.Lock()
	tried := firstTry
	mu.Unlock()
	if tried.IsZero() {
		t.Fatal("B's other process made no attempt")
	}
	// Through Redis and a write of the position: up to 2 s on a loaded
	// machine; without the wake-up it would be the minute's fallback.
	if lag := tried.Sub(stored); lag > 2*time.Second {
		t.Errorf("B's other process first tried %v after the events were stored; want it woken at once", lag)
	}
}

// failures reads s's recorded failures of transactions to destination.
func failures(t *testing.T, hs *homeserver.Homeserver, destination string) int {
	t.Helper()
	var n int
	if err := hs.DB.Reader().QueryRow(context.Background(), `SELECT failures FROM federation_destinations WHERE server_name = $1`,
		destination).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestAnsweredReadsBackoffOnlyAfterFailure: a successful request to
// another server (here GET /version) ends the backoff of a destination
// that failed, but reads federation_destinations only then: none for
// a destination that never failed, one to end the backoff, none after.
func TestAnsweredReadsBackoffOnlyAfterFailure(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		a, b := n.start(), n.start()
		ask := func(times int) {
			t.Helper()
			for range times {
				if err := a.HS.Federation.AskVersion(ctx, b.Name); err != nil {
					t.Fatalf("A asking B's version: %v", err)
				}
			}
		}
		start := a.HS.Federation.DestinationReads()
		ask(5)
		if reads := a.HS.Federation.DestinationReads() - start; reads != 0 {
			t.Errorf("A read federation_destinations %d times after 5 answers of B, which never failed; want 0", reads)
		}
		if err := a.HS.Federation.RecordSendFailure(ctx, b.Name); err != nil {
			t.Fatal(err)
		}
		if got := failures(t, a.HS, b.Name); got != 1 {
			t.Fatalf("B's failures on A: %d, want 1", got)
		}
		ask(1)
		if got := failures(t, a.HS, b.Name); got != 0 {
			t.Errorf("B's failures on A after B answered: %d, want 0 (the backoff ended)", got)
		}
		ask(5)
		if reads := a.HS.Federation.DestinationReads() - start; reads != 1 {
			t.Errorf("A read federation_destinations %d times in all; want 1 (to end B's backoff)", reads)
		}
	})
}

// TestSplitModeAnswerEndsBackoffOfOtherProcess: B runs as two processes.
// One records that a transaction to A failed; A then answers a request
// of the other, which ends the backoff, as it would in one process: no
// backoff is left that an answer should have ended. A answers after the
// other process heard of the failure (a moment later), or before (at
// once, and with the other process's reading of the destinations with
// failures held until A has answered).
func TestSplitModeAnswerEndsBackoffOfOtherProcess(t *testing.T) {
	t.Parallel()
	n := postgresNetwork(t)
	a := n.start()
	b, other := splitServer(t, n)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		wait time.Duration
		hold bool
	}{{"after B heard", 500 * time.Millisecond, false}, {"at once", 0, false}, {"before B read", 300 * time.Millisecond, true}} {
		release := make(chan struct{})
		if tc.hold {
			b.HS.Federation.HoldBackoffReloads(release)
		}
		if err := other.Federation.RecordSendFailure(ctx, a.Name); err != nil {
			t.Fatal(err)
		}
		if got := failures(t, other, a.Name); got != 1 {
			t.Fatalf("%s: A's failures: %d, want 1", tc.name, got)
		}
		time.Sleep(tc.wait)
		if err := b.HS.Federation.AskVersion(ctx, a.Name); err != nil {
			t.Fatalf("%s: B asking A's version: %v", tc.name, err)
		}
		close(release)
		deadline := time.Now().Add(3 * time.Second)
		for failures(t, other, a.Name) != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%s: A answered B after B's other process recorded a failure; the backoff still stands 3 s later", tc.name)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}
