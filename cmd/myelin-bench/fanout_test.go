package main

import (
	"testing"
	"time"
)

// The fan-out sender's lateness of its own (the tool's goroutine began the
// PUT after the due time while nothing of its was waiting for the server)
// is not the server's: the message counts from the PUT's start. Lateness
// behind a PUT that was still waiting for the server at the due time is the
// server's, and still counts from the due time.
func TestSendOriginChargesOnlyTheServer(t *testing.T) {
	base := time.Date(2026, 11, 29, 5, 0, 0, 0, time.UTC)
	ms := func(n float64) time.Time { return base.Add(time.Duration(n * float64(time.Millisecond))) }
	cases := []struct {
		name                     string
		due, putStart, idleSince time.Time
		want                     time.Time
	}{
		// The previous PUT returned 400 ms before the due time; the tool
		// began this one 8 ms late.
		{"tool late, sender idle", ms(500), ms(508), ms(100), ms(508)},
		// The previous PUT returned exactly at the due time.
		{"tool late, previous returned at due", ms(500), ms(503), ms(500), ms(503)},
		// The previous PUT was still waiting for the server at the due
		// time and returned 30 ms later: the wait is the server's.
		{"previous PUT still in flight", ms(500), ms(530), ms(530), ms(500)},
		// On time (the spin returned at the due time).
		{"on time", ms(500), ms(500), ms(100), ms(500)},
	}
	for _, c := range cases {
		if got := sendOrigin(c.due, c.putStart, c.idleSince); !got.Equal(c.want) {
			t.Errorf("%s: sendOrigin = %v after base, want %v", c.name, got.Sub(base), c.want.Sub(base))
		}
	}
}
