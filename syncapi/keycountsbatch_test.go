package syncapi

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
)

// gatedKeys is an E2EEBatch that records each read's devices and holds
// each read until released; every answer counts the read's number of
// "signed_curve25519" keys and names the device's user as its fallback
// algorithm, so a test sees which read answered whom.
type gatedKeys struct {
	mu      sync.Mutex
	reads   [][]DeviceRef
	started chan int
	release map[int]chan struct{} // read n waits for release[n] to close
}

func (k *gatedKeys) KeyCountsOfDevices(_ context.Context, devices []DeviceRef) ([]DeviceKeyCounts, error) {
	k.mu.Lock()
	k.reads = append(k.reads, slices.Clone(devices))
	n := len(k.reads)
	gate := k.release[n]
	k.mu.Unlock()
	k.started <- n
	<-gate
	out := make([]DeviceKeyCounts, len(devices))
	for i, d := range devices {
		out[i] = DeviceKeyCounts{OneTimeKeys: map[string]int{"signed_curve25519": n}, UnusedFallback: []string{d.UserID + "/" + d.DeviceID}}
	}
	return out, nil
}

// TestKeyCountsBatcher: the key counts reads are grouped, and a grouped
// answer is never staler or another device's: a request that asks
// while a read runs is answered by a later read (one read for all who
// asked meanwhile), each gets its own device's counts, and a waiting
// request that ends does not fail the others.
func TestKeyCountsBatcher(t *testing.T) {
	src := &gatedKeys{started: make(chan int, 10), release: map[int]chan struct{}{}}
	for n := 1; n <= 3; n++ {
		src.release[n] = make(chan struct{})
	}
	c := &keyCountsBatcher{e2ee: src}
	type answer struct {
		otk      map[string]int
		fallback []string
		err      error
	}
	ask := func(ctx context.Context, user, device string) chan answer {
		ch := make(chan answer, 1)
		go func() {
			otk, fallback, err := c.keyCounts(ctx, user, device)
			ch <- answer{otk, fallback, err}
		}()
		return ch
	}
	first := ask(context.Background(), "@u0:x", "D0")
	if n := <-src.started; n != 1 {
		t.Fatalf("read %d started first", n)
	}
	later := map[string]chan answer{}
	for u := 1; u <= 4; u++ {
		later[fmt.Sprintf("@u%d:x/D%d", u, u%2)] = ask(context.Background(), fmt.Sprintf("@u%d:x", u), fmt.Sprintf("D%d", u%2))
	}
	cancelled, cancel := context.WithCancel(context.Background())
	dropped := ask(cancelled, "@u9:x", "D9")
	waitFor(t, func() bool {
		var ok bool
		c.reads.inspect(struct{}{}, func(_ bool, next *[]DeviceRef) {
			ok = next != nil && len(*next) == 5
		})
		return ok
	})
	cancel()
	if a := <-dropped; a.err == nil {
		t.Fatal("a request whose context ended got an answer")
	}
	close(src.release[1])
	if a := <-first; a.err != nil || a.otk["signed_curve25519"] != 1 || !slices.Equal(a.fallback, []string{"@u0:x/D0"}) {
		t.Fatalf("first answer %+v", a)
	}
	if n := <-src.started; n != 2 {
		t.Fatalf("read %d started for the group", n)
	}
	close(src.release[2])
	for dev, ch := range later {
		a := <-ch
		if a.err != nil || a.otk["signed_curve25519"] != 2 || !slices.Equal(a.fallback, []string{dev}) {
			t.Errorf("%s: answer %+v, want read 2's counts of its own device", dev, a)
		}
	}
	src.mu.Lock()
	if len(src.reads) != 2 || len(src.reads[1]) != 5 {
		t.Errorf("reads %v", src.reads)
	}
	src.mu.Unlock()
	waitFor(t, func() bool {
		var idle bool
		c.reads.inspect(struct{}{}, func(running bool, next *[]DeviceRef) {
			idle = !running && next == nil
		})
		return idle
	})
	again := ask(context.Background(), "@u5:x", "D5")
	if n := <-src.started; n != 3 {
		t.Fatalf("read %d started when idle", n)
	}
	close(src.release[3])
	if a := <-again; a.err != nil || a.otk["signed_curve25519"] != 3 {
		t.Fatalf("idle answer %+v", a)
	}
}
