package main

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestPercentileNearestRank(t *testing.T) {
	// 1..100 ms: the p-th percentile of 100 samples is the p-th sample.
	var samples []time.Duration
	for i := 100; i >= 1; i-- { // reversed, to check that summarize sorts
		samples = append(samples, time.Duration(i)*time.Millisecond)
	}
	s := summarize(samples)
	want := Summary{N: 100, Min: 1, Mean: 50.5, P50: 50, P90: 90, P99: 99, P999: 100, Max: 100}
	if *s != want {
		t.Fatalf("summary = %+v, want %+v", *s, want)
	}
}

func TestPercentileTable(t *testing.T) {
	d := func(ns ...int) []time.Duration {
		out := make([]time.Duration, len(ns))
		for i, n := range ns {
			out[i] = time.Duration(n)
		}
		return out
	}
	tests := []struct {
		name    string
		samples []time.Duration
		p       float64
		want    time.Duration
	}{
		{"one sample", d(7), 50, 7},
		{"one sample p99.9", d(7), 99.9, 7},
		{"two samples p50 takes the lower", d(1, 2), 50, 1},
		{"two samples p51 takes the upper", d(1, 2), 51, 2},
		{"p99 of 1000 is the 990th", seq(1000), 99, 990},
		{"p99.9 of 1000 is the 999th", seq(1000), 99.9, 999},
		{"p99.9 of 10 is the max", seq(10), 99.9, 10},
		{"tiny p takes the min", seq(10), 0.001, 1},
		{"empty", nil, 50, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := percentile(tt.samples, tt.p); got != tt.want {
				t.Errorf("percentile(%v) = %v, want %v", tt.p, got, tt.want)
			}
		})
	}
}

func seq(n int) []time.Duration {
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = time.Duration(i + 1)
	}
	return out
}

func TestSummarizeEmptyIsNil(t *testing.T) {
	if s := summarize(nil); s != nil {
		t.Fatalf("summarize(nil) = %+v, want nil", s)
	}
}

func TestRecorderCountsErrorsByKind(t *testing.T) {
	r := newRecorder()
	r.ok(time.Millisecond)
	r.fail(&requestError{Op: "send", Status: 404, Errcode: "M_UNRECOGNIZED", Msg: "Unrecognized request"})
	r.fail(&requestError{Op: "send", Status: 404, Errcode: "M_UNRECOGNIZED", Msg: "Unrecognized request"})
	r.fail(&requestError{Op: "sync", Err: errors.New("connection refused")})
	r.failN("deliver: not delivered", 3)
	ok, failed := r.count()
	if ok != 1 || failed != 6 {
		t.Fatalf("count = %d ok, %d failed; want 1, 6", ok, failed)
	}
	if n := r.errors["send: HTTP 404 M_UNRECOGNIZED"]; n != 2 {
		t.Errorf("404 count = %d, want 2 (errors: %v)", n, r.errors)
	}
	if n := r.errors["sync: transport error"]; n != 1 {
		t.Errorf("transport error count = %d, want 1 (errors: %v)", n, r.errors)
	}
}

// TestSleepUntil: sleepUntil never returns before the scheduled time,
// and returns at once when its context ends.
func TestSleepUntil(t *testing.T) {
	for range 20 {
		due := time.Now().Add(3 * time.Millisecond)
		sleepUntil(context.Background(), due)
		if now := time.Now(); now.Before(due) {
			t.Fatalf("returned %v before the scheduled time", due.Sub(now))
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	sleepUntil(ctx, start.Add(time.Hour))
	if d := time.Since(start); d > time.Second {
		t.Fatalf("a cancelled wait took %v", d)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	sleepUntil(ctx, time.Now().Add(time.Hour)) // ends with ctx, in its spin or its sleep
}
