package federationapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
)

// BenchmarkInboundTransaction: PUT /send with 50 signed PDUs (a chain of
// messages from a user of a remote server) to a server holding the room,
// over TLS. The timed part is the whole transaction: µs/PDU and PDUs/s.
//
// Each iteration also feeds a second chain of 50 PDUs through the same
// steps one at a time, outside the timer, and times each step apart:
//
//   - sig-µs/PDU: the checks /send makes before the roomserver (format,
//     sizes, the sender's server's signature, content hash), with the
//     remote key cached;
//   - auth-µs/PDU: roomserver.CheckInputEvent, which runs InputEvent's
//     auth checks (auth events, state before, current state) and writes
//     nothing;
//   - store-µs/PDU: InputEvent less the auth time of the same PDU, i.e.
//     the transaction that stores the event, its state and the stream.
func BenchmarkInboundTransaction(b *testing.B) {
	n := newNetwork(b, storage.SQLite)
	a, remote := n.start(), n.start()
	roomID := publicRoom(b, a, a.user("alice"))
	if _, err := remote.HS.Federation.JoinRemote(b.Context(), roomID, remote.user("bob"), []string{a.Name}); err != nil {
		b.Fatal(err)
	}
	version, err := a.HS.Rooms.RoomVersion(b.Context(), roomID)
	if err != nil {
		b.Fatal(err)
	}
	// Stop the remote so the benchmark measures only A; its key is cached.
	remote.stop()
	bob := remote.user("bob")
	chain := func() []json.RawMessage {
		pdus := make([]json.RawMessage, 0, 50)
		var prev gomatrixserverlib.PDU
		for j := 0; j < 50; j++ {
			var edit func(*gomatrixserverlib.ProtoEvent)
			if prev != nil {
				p := prev
				edit = func(pe *gomatrixserverlib.ProtoEvent) {
					pe.PrevEvents = []string{p.EventID()}
					pe.Depth = p.Depth() + 1
				}
			}
			prev = buildPDU(b, a, roomID, bob, "m.room.message", nil, map[string]any{"body": "bench", "n": j}, remote.Name, remote.HS.Key, edit)
			pdus = append(pdus, prev.JSON())
		}
		return pdus
	}
	var sig, auth, store time.Duration
	phased := 0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		pdus := chain()
		b.StartTimer()
		status, body := n.request(a, remote.Name, remote.HS.Key, a.Name, http.MethodPut,
			"/_matrix/federation/v1/send/bench"+strconv.Itoa(i)+"_"+strconv.FormatInt(time.Now().UnixNano(), 36),
			map[string]any{"origin": remote.Name, "origin_server_ts": time.Now().UnixMilli(), "pdus": pdus})
		b.StopTimer()
		if status != http.StatusOK {
			b.Fatalf("send: %d %s", status, body)
		}
		var resp sendResponse
		_ = json.Unmarshal(body, &resp)
		for id, r := range resp.PDUs {
			if r.Error != "" {
				b.Fatalf("PDU %s: %s", id, r.Error)
			}
		}
		s, au, st := inputPhases(b, a, version, chain())
		sig, auth, store = sig+s, auth+au, store+st
		phased += 50
		b.StartTimer()
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*50), "µs/PDU")
	b.ReportMetric(float64(b.N*50)/b.Elapsed().Seconds(), "PDUs/s")
	perPDU := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(phased) }
	b.ReportMetric(perPDU(sig), "sig-µs/PDU")
	b.ReportMetric(perPDU(auth), "auth-µs/PDU")
	b.ReportMetric(perPDU(store), "store-µs/PDU")
}

// inputPhases feeds pdus (a chain, oldest first) to s one at a time and
// times signature checking, auth and storage apart.
func inputPhases(b *testing.B, s *fedServer, version string, pdus []json.RawMessage) (sig, auth, store time.Duration) {
	ctx := context.Background()
	for _, raw := range pdus {
		t0 := time.Now()
		if err := s.HS.Federation.VerifyPDU(ctx, raw); err != nil {
			b.Fatalf("verify: %v", err)
		}
		t1 := time.Now()
		req := roomserver.InputEventRequest{RoomVersion: version, JSON: raw}
		res, err := s.HS.Rooms.CheckInputEvent(ctx, req)
		if err != nil || res.Outcome != roomserver.Accepted {
			b.Fatalf("auth: %+v, %v", res, err)
		}
		t2 := time.Now()
		res, err = s.HS.Rooms.InputEvent(ctx, req)
		if err != nil || res.Outcome != roomserver.Accepted {
			b.Fatalf("input: %+v, %v", res, err)
		}
		t3 := time.Now()
		sig += t1.Sub(t0)
		auth += t2.Sub(t1)
		store += max(t3.Sub(t2)-t2.Sub(t1), 0)
	}
	return sig, auth, store
}
