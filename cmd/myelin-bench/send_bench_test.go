package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
)

// The tool's own cost per sent message (client side only, against a
// server that answers at once): net/http's client against sendConn.
func BenchmarkSendClient(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"event_id":"$abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"}`))
	}))
	defer srv.Close()
	e := &env{runID: "0123abcd"}
	ctx := context.Background()
	b.Run("nethttp", func(b *testing.B) {
		c := &client{base: srv.URL, hc: newHTTPClient(), token: "syt_token_0123456789"}
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if err := c.send(ctx, "!room0123456789:localhost", e.message(i)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("sendConn", func(b *testing.B) {
		sc := newSendConn(&client{base: srv.URL, token: "syt_token_0123456789"})
		defer sc.close()
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if err := sc.send(ctx, "!room0123456789:localhost", e.message(i)); err != nil {
				b.Fatal(err)
			}
		}
	})
}
