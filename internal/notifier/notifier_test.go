package notifier

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

func TestNotifyKeepsHighestPosition(t *testing.T) {
	n := New()
	n.Notify("room_events", 5)
	n.Notify("room_events", 3) // late, out-of-order notification
	n.Notify("account_data", 2)
	got := n.Positions()
	if got["room_events"] != 5 || got["account_data"] != 2 || n.Position("typing") != 0 {
		t.Fatalf("positions = %v", got)
	}
	got["room_events"] = 99 // a copy: must not change the notifier
	if n.Position("room_events") != 5 {
		t.Fatal("Positions returned the notifier's own map")
	}
}

func TestChangedClosesOnlyOnAdvance(t *testing.T) {
	n := New()
	n.Notify("s", 10)
	ch := n.Changed()
	n.Notify("s", 10) // no advance
	n.Notify("s", 9)  // no advance
	select {
	case <-ch:
		t.Fatal("Changed closed without an advance")
	default:
	}
	n.Notify("s", 11)
	select {
	case <-ch:
	default:
		t.Fatal("Changed not closed after an advance")
	}
}

func TestWaitPastWakesPromptly(t *testing.T) {
	n := New()
	n.Notify("room_events", 7)
	since := Positions{"room_events": 7}
	done := make(chan Positions, 1)
	go func() {
		got, err := WaitPast(context.Background(), n, since)
		if err != nil {
			t.Error(err)
		}
		done <- got
	}()
	time.Sleep(10 * time.Millisecond)
	select {
	case <-done:
		t.Fatal("WaitPast returned before any advance")
	default:
	}
	start := time.Now()
	n.Notify("account_data", 1)
	select {
	case got := <-done:
		if got["account_data"] != 1 {
			t.Fatalf("got %v", got)
		}
		// WaitPast has no timer: a missed wake never returns (the
		// select's 10 s). The bound catches a wake that rides on
		// something periodic instead of the Notify, yet leaves a loaded
		// machine a second for one goroutine hand-off (50 ms did not).
		if d := time.Since(start); d > time.Second {
			t.Fatalf("woke after %v", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WaitPast did not wake")
	}
}

func TestWaitPastReturnsAtOnceWhenAlreadyPast(t *testing.T) {
	n := New()
	n.Notify("room_events", 3)
	got, err := WaitPast(context.Background(), n, Positions{"room_events": 2})
	if err != nil || got["room_events"] != 3 {
		t.Fatalf("got %v, %v", got, err)
	}
}

func TestWaitPastTimeout(t *testing.T) {
	n := New()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err := WaitPast(ctx, n, Positions{})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
}

// TestConcurrentNotifyAndWait runs many writers and waiters at once; run
// with -race. Every waiter must see the final position.
func TestConcurrentNotifyAndWait(t *testing.T) {
	n := New()
	const writers, waiters, perWriter = 8, 32, 200
	var wg sync.WaitGroup
	final := int64(writers * perWriter)
	for w := 0; w < waiters; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			since := Positions{}
			for since["s"] < final {
				got, err := WaitPast(ctx, n, since)
				if err != nil {
					t.Errorf("waiter stuck at %v: %v", since, err)
					return
				}
				since = got
			}
		}()
	}
	var next sync.Mutex
	pos := int64(0)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perWriter; i++ {
				next.Lock()
				pos++
				p := pos
				next.Unlock()
				n.Notify("s", p)
				_ = n.Positions()
			}
		}()
	}
	wg.Wait()
	if n.Position("s") != final {
		t.Fatalf("position = %d, want %d", n.Position("s"), final)
	}
}

// BenchmarkNotifyWake measures Notify to a waiting goroutine's wake-up.
func BenchmarkNotifyWake(b *testing.B) {
	n := New()
	woke := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		since := Positions{}
		for {
			got, err := WaitPast(ctx, n, since)
			if err != nil {
				return
			}
			since = got
			woke <- struct{}{}
		}
	}()
	for i := 0; i < b.N; i++ {
		n.Notify("s", int64(i+1))
		<-woke
	}
	cancel()
}
