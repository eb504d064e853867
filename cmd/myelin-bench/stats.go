package main

import (
	"context"
	"math"
	"runtime"
	"sort"
	"sync"
	"time"
)

// Summary describes a set of latency samples, in milliseconds.
type Summary struct {
	N    int     `json:"n"`
	Min  float64 `json:"min"`
	Mean float64 `json:"mean"`
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p99_9"`
	Max  float64 `json:"max"`
}

// percentile returns the nearest-rank percentile p (0 < p <= 100) of the
// ascending slice sorted: the smallest sample such that at least p% of the
// samples are less than or equal to it. It never interpolates, so every
// figure reported is a latency that was really observed.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	// The epsilon keeps float rounding (99.9/100*1000 = 999.0000000000001)
	// from pushing an exact rank up by one.
	rank := int(math.Ceil(p/100*float64(len(sorted)) - 1e-9))
	if rank < 1 {
		rank = 1
	}
	if rank > len(sorted) {
		rank = len(sorted)
	}
	return sorted[rank-1]
}

// summarize sorts samples in place and describes them. It returns nil for no
// samples, so that an empty run prints no invented zeros.
func summarize(samples []time.Duration) *Summary {
	if len(samples) == 0 {
		return nil
	}
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	var total time.Duration
	for _, d := range samples {
		total += d
	}
	return &Summary{
		N:    len(samples),
		Min:  ms(samples[0]),
		Mean: ms(total / time.Duration(len(samples))),
		P50:  ms(percentile(samples, 50)),
		P90:  ms(percentile(samples, 90)),
		P99:  ms(percentile(samples, 99)),
		P999: ms(percentile(samples, 99.9)),
		Max:  ms(samples[len(samples)-1]),
	}
}

func ms(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }

// recorder collects the outcome of many concurrent operations: a latency
// per success and a count per kind of error. Safe for concurrent use.
type recorder struct {
	mu      sync.Mutex
	samples []time.Duration   // guarded by mu
	errors  map[string]int    // guarded by mu; key from errorKey
	example map[string]string // guarded by mu; first full message per key
}

func newRecorder() *recorder {
	return &recorder{errors: map[string]int{}, example: map[string]string{}}
}

func (r *recorder) ok(d time.Duration) {
	r.mu.Lock()
	r.samples = append(r.samples, d)
	r.mu.Unlock()
}

func (r *recorder) fail(err error) {
	key := errorKey(err)
	r.mu.Lock()
	r.errors[key]++
	if _, seen := r.example[key]; !seen {
		r.example[key] = err.Error()
	}
	r.mu.Unlock()
}

// failN records n failures of the same kind (e.g. undelivered messages).
func (r *recorder) failN(key string, n int) {
	if n == 0 {
		return
	}
	r.mu.Lock()
	r.errors[key] += n
	r.mu.Unlock()
}

// count returns the number of successes and failures so far.
func (r *recorder) count() (ok, failed int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range r.errors {
		failed += n
	}
	return len(r.samples), failed
}

func (r *recorder) okCount() int {
	ok, _ := r.count()
	return ok
}

// spinBefore is how long before an open-loop operation's scheduled time
// sleepUntil stops sleeping and watches the clock instead.
const spinBefore = 2 * time.Millisecond

// sleepUntil returns at due (or when ctx ends). A Go timer fires up to
// ~1 ms late here (the runtime waits in epoll with a timeout in whole
// milliseconds: 100 ms sleeps woke 0.59 ms late at the median, 1.05 ms
// at most), and open-loop latency is measured from the scheduled time,
// so that lateness — the tool's, not the server's — counted as latency.
// It sleeps until spinBefore ahead, then yields the processor until due:
// up to 2 ms of the tool's CPU per operation.
func sleepUntil(ctx context.Context, due time.Time) {
	if wait := time.Until(due) - spinBefore; wait > 0 {
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return
		}
	}
	for time.Now().Before(due) && ctx.Err() == nil {
		runtime.Gosched()
	}
}
