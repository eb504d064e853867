package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// syncConn must send what client.sync sends (method, path and query,
// Authorization, Accept-Encoding) over one kept-alive connection, read
// every framing of the answer (Content-Length, chunked, gzip), reconnect
// after a Connection: close, and report an error status as client.do does.
func TestSyncConnMatchesClient(t *testing.T) {
	type seen struct{ uri, auth, gzip, remote string }
	var mu sync.Mutex
	var got []seen
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, seen{r.RequestURI, r.Header.Get("Authorization"), r.Header.Get("Accept-Encoding"), r.RemoteAddr})
		i := len(got)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		body := fmt.Sprintf(`{"next_batch":"s%d","rooms":{"join":{}}}`, i)
		switch i {
		case 2: // chunked: flushed before the end
			_, _ = w.Write([]byte(body[:10]))
			w.(http.Flusher).Flush()
			_, _ = w.Write([]byte(body[10:]))
			return
		case 3: // gzip
			w.Header().Set("Content-Encoding", "gzip")
			zw := gzip.NewWriter(w)
			_, _ = zw.Write([]byte(body))
			_ = zw.Close()
			return
		case 4: // the server ends the connection after this answer
			w.Header().Set("Connection", "close")
		case 5:
			w.WriteHeader(http.StatusForbidden)
			_, _ = w.Write([]byte(`{"errcode":"M_FORBIDDEN","error":"no"}`))
			return
		}
		_, _ = w.Write([]byte(body))
	}))
	defer srv.Close()
	c := &client{base: srv.URL, hc: srv.Client(), token: "tok", userID: "@a:x"}
	sc := newSyncConn(c)
	if sc == nil {
		t.Fatal("no syncConn for an http URL")
	}
	var dials atomic.Int64
	sc.dials = &dials
	defer sc.close()
	ctx := context.Background()
	const filter, since = `{"room":{"rooms":["!r:x"]}}`, "s 1&2/3"
	for i := 1; i <= 6; i++ {
		var resp syncResponse
		_, err := sc.sync(ctx, since, filter, 30*time.Second, &resp)
		if i == 5 {
			var re *requestError
			if !errors.As(err, &re) || re.Status != http.StatusForbidden || re.Errcode != "M_FORBIDDEN" {
				t.Fatalf("sync %d: %v, want the 403 M_FORBIDDEN", i, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("sync %d: %v", i, err)
		}
		if want := fmt.Sprintf("s%d", i); resp.NextBatch != want {
			t.Errorf("sync %d: next_batch %q, want %q", i, resp.NextBatch, want)
		}
	}
	if _, _, err := c.sync(ctx, since, filter, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if len(got) != 7 {
		t.Fatalf("%d requests, want 7", len(got))
	}
	ref := got[6] // net/http's
	if !strings.HasPrefix(ref.uri, "/_matrix/client/v3/sync?filter=") || ref.gzip != "gzip" || ref.auth != "Bearer tok" {
		t.Fatalf("net/http's request %+v: the test's assumptions are wrong", ref)
	}
	for i, s := range got[:6] {
		if s.uri != ref.uri || s.auth != ref.auth || s.gzip != ref.gzip {
			t.Errorf("request %d = %+v, want the same as net/http's %+v", i+1, s, ref)
		}
	}
	// 1–4 share a connection; the server closed it after 4, so 5 and 6 use another.
	if got[0].remote != got[1].remote || got[1].remote != got[2].remote || got[2].remote != got[3].remote {
		t.Errorf("requests 1–4 came from %s %s %s %s: want one kept-alive connection", got[0].remote, got[1].remote, got[2].remote, got[3].remote)
	}
	if got[4].remote == got[3].remote || got[4].remote != got[5].remote {
		t.Errorf("requests 4–6 came from %s %s %s: want a new connection after the close", got[3].remote, got[4].remote, got[5].remote)
	}
	if n := dials.Load(); n != 2 {
		t.Errorf("%d connections dialled, want 2", n)
	}
}

// rawServer answers every request on a connection with the next of
// answers (raw bytes, written as they are); after the last it closes.
func rawServer(t *testing.T, answers ...string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				br := bufio.NewReader(conn)
				for _, a := range answers {
					for { // the request head, up to the empty line
						line, err := br.ReadString('\n')
						if err != nil {
							return
						}
						if line == "\r\n" {
							break
						}
					}
					if _, err := conn.Write([]byte(a)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return "http://" + ln.Addr().String()
}

// A malformed answer is an error, never a response: bad status line,
// body shorter than its Content-Length, bad chunk, invalid JSON, no
// next_batch.
func TestSyncConnRejectsMalformedAnswers(t *testing.T) {
	const ok = `{"next_batch":"s1"}`
	for _, tc := range []struct{ name, answer, want string }{
		{"status line", "HTTP/1.1 2OO OK\r\nContent-Length: 19\r\n\r\n" + ok, "malformed status line"},
		{"not HTTP", "SSH-2.0-OpenSSH\r\n\r\n", "malformed status line"},
		{"short body", "HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n" + ok, "unexpected EOF"},
		{"bad chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n" + ok + "\r\n0\r\n\r\n", "bad chunk size"},
		{"invalid JSON", "HTTP/1.1 200 OK\r\nContent-Length: 18\r\n\r\n" + ok[:18], "decoding the answer"},
		{"no next_batch", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", "no next_batch"},
		{"two lengths", "HTTP/1.1 200 OK\r\nContent-Length: 19\r\nContent-Length: 20\r\n\r\n" + ok, "bad Content-Length"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc := newSyncConn(&client{base: rawServer(t, tc.answer), token: "tok"})
			defer sc.close()
			var resp syncResponse
			_, err := sc.sync(context.Background(), "", "", time.Second, &resp)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
	// The same framings, well formed, are read (the chunked one with an
	// extension and a trailer; the last one has no length: up to the close).
	for _, answer := range []string{
		"HTTP/1.1 200 OK\r\ncontent-length: 19\r\n\r\n" + ok,
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 19\r\n\r\n" + ok,
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\n" + ok[:5] + "\r\ne\r\n" + ok[5:] + "\r\n0\r\nX-T: 1\r\n\r\n",
		"HTTP/1.0 200 OK\r\n\r\n" + ok,
	} {
		sc := newSyncConn(&client{base: rawServer(t, answer), token: "tok"})
		var resp syncResponse
		if _, err := sc.sync(context.Background(), "", "", time.Second, &resp); err != nil || resp.NextBatch != "s1" {
			t.Errorf("answer %q: next_batch %q, err %v; want s1", answer, resp.NextBatch, err)
		}
		sc.close()
	}
}

// A long poll that the run's end cancels returns at once.
func TestSyncConnCanceledWhileWaiting(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		conn, err := ln.Accept()
		if err == nil {
			defer conn.Close()
			time.Sleep(5 * time.Second) // never answers in time
		}
	}()
	sc := newSyncConn(&client{base: "http://" + ln.Addr().String(), token: "tok"})
	defer sc.close()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	var resp syncResponse
	_, err = sc.sync(ctx, "", "", 30*time.Second, &resp)
	if !errors.Is(err, context.Canceled) || time.Since(start) > 2*time.Second {
		t.Fatalf("err = %v after %s, want context.Canceled soon after the cancel", err, time.Since(start))
	}
}

// syncAnswer is a /sync answer with next_batch next and, in room, the
// timeline events (JSON objects) given.
func syncAnswer(next, room string, events ...string) string {
	return fmt.Sprintf(`{"next_batch":%q,"rooms":{"join":{%q:{"timeline":{"events":[%s]}}}}}`, next, room, strings.Join(events, ","))
}

func benchEvent(run string, seq int) string {
	return fmt.Sprintf(`{"type":"m.room.message","event_id":"$%s%d","content":{"msgtype":"m.text","body":"b","myelin_bench":{"run":%q,"seq":%d,"sent_ms":1}}}`, run, seq, run, seq)
}

// The listener, with either client: a malformed answer is counted as an
// error and the same token polled again; the message is found by its run
// and sequence number in the room's timeline only; next_batch is followed;
// it stops once it has every message.
func TestListenRejectsMalformedAndFindsMessages(t *testing.T) {
	for _, netHTTP := range []bool{false, true} {
		t.Run(fmt.Sprintf("nethttp=%v", netHTTP), func(t *testing.T) {
			const room, run = "!r:x", "run1"
			var mu sync.Mutex
			var sinces []string
			polls := map[string]int{}
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				q := r.URL.Query()
				since := q.Get("since")
				mu.Lock()
				sinces = append(sinces, since)
				polls[since]++
				n := polls[since]
				mu.Unlock()
				if r.URL.Path != "/_matrix/client/v3/sync" || q.Get("filter") != "F1" || q.Get("timeout") != "30000" || r.Header.Get("Authorization") != "Bearer tok" {
					w.WriteHeader(http.StatusBadRequest)
					_, _ = w.Write([]byte(`{"errcode":"M_UNKNOWN","error":"unexpected request"}`))
					return
				}
				var body string
				switch {
				case since == "s0" && n == 1: // cut short: invalid JSON
					body = syncAnswer("s1", room, benchEvent(run, 0))
					body = body[:len(body)-3]
				case since == "s0":
					body = syncAnswer("s1", room,
						`{"type":"m.room.member","content":{"membership":"join","myelin_bench":{"run":"run1","seq":1}}}`,
						benchEvent("other", 1), // another run's message
						benchEvent(run, 0))
					// message 1 in another room does not count
					body = strings.Replace(body, `}}}}`, `}},"!other:x":{"timeline":{"events":[`+benchEvent(run, 1)+`]}}}}`, 1)
				case since == "s1" && n == 1: // valid JSON, no next_batch
					body = `{"rooms":{"join":{}}}`
				case since == "s1":
					body = syncAnswer("s2", room, benchEvent(run, 0), benchEvent(run, 1))
				default:
					w.WriteHeader(http.StatusBadRequest)
					_, _ = w.Write([]byte(`{"errcode":"M_UNKNOWN","error":"unexpected since"}`))
					return
				}
				_, _ = w.Write([]byte(body))
			}))
			defer srv.Close()
			e := &env{runID: run, opts: options{listenNetHTTP: netHTTP}}
			l := &client{base: srv.URL, hc: newHTTPClient(), token: "tok"}
			received := make([]time.Time, 2)
			rec := newRecorder()
			var responses, dials atomic.Int64
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			start := time.Now()
			e.listen(ctx, l, room, "F1", "s0", received, rec, &responses, &dials)
			if ctx.Err() != nil {
				t.Fatal("the listener did not stop once it had both messages")
			}
			if want := []string{"s0", "s0", "s1", "s1"}; fmt.Sprint(sinces) != fmt.Sprint(want) {
				t.Errorf("polled since %v, want %v", sinces, want)
			}
			if received[0].Before(start) || received[1].Before(received[0]) {
				t.Errorf("received %v, want both messages stamped, 0 before 1", received)
			}
			if responses.Load() != 2 {
				t.Errorf("%d responses counted, want 2", responses.Load())
			}
			ok, failed := rec.count()
			// The first error (the example kept) is the invalid JSON's.
			if ok != 0 || failed != 2 || rec.errors["sync: transport error"] != 2 ||
				!strings.Contains(rec.example["sync: transport error"], "decoding the answer") {
				t.Errorf("recorded %d ok, %d failed %v %v; want the 2 bad answers as errors", ok, failed, rec.errors, rec.example)
			}
			if want := int64(1); !netHTTP && dials.Load() != want {
				t.Errorf("%d connections, want %d", dials.Load(), want)
			}
		})
	}
}

// cannedSyncServer answers /sync?…since=sN… with message N of run as a
// ready-made HTTP answer (Content-Length), allocating next to nothing
// itself, so that a test or benchmark sees the client's own cost.
func cannedSyncServer(tb testing.TB, room, run string, n int) string {
	tb.Helper()
	answers := map[string][]byte{}
	for i := range n {
		body := syncAnswer(fmt.Sprintf("s%d", i+1), room, benchEvent(run, i))
		answers[fmt.Sprintf("s%d", i)] = fmt.Appendf(nil, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				br := bufio.NewReaderSize(conn, 8192)
				for {
					line, err := br.ReadSlice('\n') // GET /…?…since=sN&… HTTP/1.1
					if err != nil {
						return
					}
					_, after, _ := bytes.Cut(line, []byte("since="))
					since, _, _ := bytes.Cut(after, []byte("&"))
					a := answers[string(since)]
					for len(line) > 2 {
						if line, err = br.ReadSlice('\n'); err != nil {
							return
						}
					}
					if a == nil {
						a = []byte("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
					}
					if _, err := conn.Write(a); err != nil {
						return
					}
				}
			}()
		}
	}()
	return "http://" + ln.Addr().String()
}

// The listener's own allocations per /sync answer (client side: the
// canned server allocates nothing per request). net/http's client made
// about 60 per answer here; syncConn ~20, most of them the JSON decoding
// that both share.
func TestListenAllocationsPerAnswer(t *testing.T) {
	const room, run, n = "!room0123456789:localhost", "0123abcd", 50
	base := cannedSyncServer(t, room, run, n)
	e := &env{runID: run}
	l := &client{base: base, hc: newHTTPClient(), token: "syt_token_0123456789"}
	var responses, dials atomic.Int64
	allocs := testing.AllocsPerRun(5, func() {
		rec := newRecorder()
		received := make([]time.Time, n)
		e.listen(context.Background(), l, room, url.QueryEscape("F1"), "s0", received, rec, &responses, &dials)
		if ok, failed := rec.count(); ok != 0 || failed != 0 || received[n-1].IsZero() {
			t.Fatalf("the listener recorded %d/%d and received %v", ok, failed, received)
		}
	}) / n
	t.Logf("%.1f allocations per answer", allocs)
	if allocs > 35 {
		t.Errorf("%.1f allocations per answer, want at most 35", allocs)
	}
}

// The tool's own cost per /sync answer (client side only): net/http's
// client against syncConn, each the whole listener loop.
func BenchmarkListen(b *testing.B) {
	const room, run, n = "!room0123456789:localhost", "0123abcd", 100
	base := cannedSyncServer(b, room, run, n)
	for _, netHTTP := range []bool{true, false} {
		name := "syncConn"
		if netHTTP {
			name = "nethttp"
		}
		b.Run(name, func(b *testing.B) {
			e := &env{runID: run, opts: options{listenNetHTTP: netHTTP}}
			l := &client{base: base, hc: newHTTPClient(), token: "syt_token_0123456789"}
			var responses, dials atomic.Int64
			b.ReportAllocs()
			cpu0 := processCPU(b)
			for b.Loop() {
				rec := newRecorder()
				e.listen(context.Background(), l, room, "F1", "s0", make([]time.Time, n), rec, &responses, &dials)
			}
			// Process CPU (user+system, the canned server's included) per answer.
			b.ReportMetric(float64((processCPU(b)-cpu0).Microseconds())/float64(responses.Load()), "cpu-µs/answer")
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(responses.Load()), "ns/answer")
		})
	}
}

// The message content is the JSON the tool sent before, as a map: same
// keys, same order, same values.
func TestMessageJSONAsBefore(t *testing.T) {
	e := &env{runID: "0123abcd"}
	m := e.message(7)
	got, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := json.Marshal(map[string]any{
		"msgtype": "m.text",
		"body":    "myelin-bench 0123abcd message 7",
		"myelin_bench": map[string]any{
			"run":     "0123abcd",
			"seq":     7,
			"sent_ms": m.MyelinBench.SentMS,
		},
	})
	if !bytes.Equal(got, want) {
		t.Errorf("content %s, want %s", got, want)
	}
	if now := time.Now().UnixMilli(); m.MyelinBench.SentMS > now || m.MyelinBench.SentMS < now-1000 {
		t.Errorf("sent_ms %d, want about %d", m.MyelinBench.SentMS, now)
	}
}

// processCPU is this process's user+system CPU time so far.
func processCPU(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
