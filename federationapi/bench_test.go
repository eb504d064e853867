package federationapi_test

import (
	"encoding/json"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/storage"
)

// BenchmarkInboundTransaction: PUT /send with 50 signed PDUs (a chain of
// messages from a user of a remote server) to a server holding the room,
// over TLS. Reports µs per PDU (signature check, auth and storage
// together).
func BenchmarkInboundTransaction(b *testing.B) {
	n := newNetwork(b, storage.SQLite)
	a, remote := n.start(), n.start()
	roomID := publicRoom(b, a, a.user("alice"))
	if _, err := remote.HS.Federation.JoinRemote(b.Context(), roomID, remote.user("bob"), []string{a.Name}); err != nil {
		b.Fatal(err)
	}
	// Stop the remote so the benchmark measures only A; its key is cached.
	remote.stop()
	bob := remote.user("bob")
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
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
		b.StartTimer()
		status, body := n.request(a, remote.Name, remote.HS.Key, a.Name, http.MethodPut,
			"/_matrix/federation/v1/send/bench"+strconv.Itoa(i)+"_"+strconv.FormatInt(time.Now().UnixNano(), 36),
			map[string]any{"origin": remote.Name, "origin_server_ts": time.Now().UnixMilli(), "pdus": pdus})
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
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*50), "µs/PDU")
	b.ReportMetric(float64(b.N*50)/b.Elapsed().Seconds(), "PDUs/s")
}
