package federationapi_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/storage"
)

// TestDeviceListResyncRetriedAcrossServers: bob on B shares a room with
// alice on A (B holds its full state, so it tracks her device list);
// alice uploads her device keys while B cannot reach A. The
// m.device_list_update reaches B (A sends it to B), which cannot apply
// it (it holds no copy of alice's list), marks its copy stale and asks A
// for the whole list (GET /user/devices) — in vain. Once A is reachable
// again B asks once more by itself, with no /keys/query from bob, and
// caches alice's device; before, a failed resync was not tried again
// until someone queried her keys. Spec: server-server-api, "Device
// Management".
func TestDeviceListResyncRetriedAcrossServers(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		cut := partitionable(n)
		a, b, alice, _, _ := clientPair(t, n)
		aliceID := string(alice.id())
		cut(true, a) // B's requests to A fail; A's to B still go
		// alice reaches A in process, not through the cut listener.
		alice.cli.Client = &http.Client{Transport: handlerTransport{a.HS.Handler()}}

		alice.uploadDeviceKeys()
		eventually(t, "B to mark its copy of alice's devices stale", func() bool {
			var stale bool
			err := b.HS.DB.Reader().QueryRow(context.Background(),
				`SELECT stale FROM keyserver_remote_users WHERE user_id = $1`, aliceID).Scan(&stale)
			if err != nil && !storage.IsNoRows(err) {
				t.Fatal(err)
			}
			return err == nil && stale
		})
		// B's resync starts as the update is taken; its request to A
		// fails at once. Leave it the time to.
		time.Sleep(1500 * time.Millisecond)
		if d := cachedDevices(t, b, aliceID); len(d) != 0 {
			t.Fatalf("B cached %v while A was unreachable", d)
		}
		cut(false, a)
		eventually(t, "B to cache alice's device once A is reachable", func() bool {
			return slices.Contains(cachedDevices(t, b, aliceID), string(alice.cli.DeviceID))
		})
	})
}

// handlerTransport answers requests with a handler, in process.
type handlerTransport struct{ h http.Handler }

func (t handlerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	w := httptest.NewRecorder()
	t.h.ServeHTTP(w, r)
	return w.Result(), nil
}
