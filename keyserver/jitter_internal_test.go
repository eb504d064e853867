package keyserver

import (
	"testing"
	"time"
)

// TestResyncWaitJittered: the resync loops' waits are drawn from
// [d/2, d], so that loops started together do not retry together.
func TestResyncWaitJittered(t *testing.T) {
	const d = time.Second
	seen := map[time.Duration]bool{}
	for range 200 {
		w := jitter(d)
		if w < d/2 || w > d {
			t.Fatalf("jitter(%v) = %v, outside [%v, %v]", d, w, d/2, d)
		}
		seen[w] = true
	}
	if len(seen) < 100 {
		t.Errorf("200 jittered waits took %d values", len(seen))
	}
}
