package federationapi_test

import (
	"encoding/json"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"
)

// TestKeysFanOutTimeout: /keys/query and /keys/claim naming a user of a
// server that accepts connections but never answers come back within
// the client's timeout (plus a margin), with that server in failures and
// the other users answered. Spec: client-server-api, "POST
// /_matrix/client/v3/keys/query" and ".../keys/claim" (timeout,
// failures); issue 7, "remote device keys (keys/query/claim fan-out with
// timeout and failures)".
func TestKeysFanOutTimeout(t *testing.T) {
	// Serial: asserts the answers come within their timeout.
	forEachEngine(t, func(t *testing.T, n *network) {
		_, _, alice, bob, _ := clientPair(t, n)
		alice.uploadDeviceKeys()
		aliceID := string(alice.id())

		// A server that takes the connection and then says nothing.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		var held []net.Conn
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				held = append(held, c)
				mu.Unlock()
			}
		}()
		t.Cleanup(func() {
			ln.Close()
			mu.Lock()
			for _, c := range held {
				c.Close()
			}
			mu.Unlock()
		})
		silent := "localhost:" + strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
		ghost := "@ghost:" + silent

		const timeoutMS, margin = 1500, 5 * time.Second
		start := time.Now()
		resp := bob.queryKeys(map[string][]string{aliceID: {}, ghost: {}}, timeoutMS)
		if took := time.Since(start); took > time.Duration(timeoutMS)*time.Millisecond+margin {
			t.Errorf("keys/query took %v with a %d ms timeout", took, timeoutMS)
		}
		if _, ok := resp.Failures[silent]; !ok {
			t.Errorf("keys/query: the silent server %s is not in failures: %v", silent, resp.Failures)
		}
		if _, ok := resp.DeviceKeys[aliceID][string(alice.cli.DeviceID)]; !ok {
			t.Errorf("keys/query: alice's device is missing beside the failure: %+v", resp.DeviceKeys)
		}

		var claim struct {
			OneTimeKeys map[string]map[string]map[string]json.RawMessage `json:"one_time_keys"`
			Failures    map[string]json.RawMessage                       `json:"failures"`
		}
		start = time.Now()
		if err := bob.rawCall(http.MethodPost, "/_matrix/client/v3/keys/claim", map[string]any{
			"timeout": timeoutMS,
			"one_time_keys": map[string]any{
				aliceID: map[string]string{string(alice.cli.DeviceID): "signed_curve25519"},
				ghost:   map[string]string{"GHOSTDEVICE": "signed_curve25519"},
			}}, &claim); err != nil {
			t.Fatal(err)
		}
		if took := time.Since(start); took > time.Duration(timeoutMS)*time.Millisecond+margin {
			t.Errorf("keys/claim took %v with a %d ms timeout", took, timeoutMS)
		}
		if _, ok := claim.Failures[silent]; !ok {
			t.Errorf("keys/claim: the silent server %s is not in failures: %v", silent, claim.Failures)
		}
		if len(claim.OneTimeKeys[aliceID][string(alice.cli.DeviceID)]) != 1 {
			t.Errorf("keys/claim: alice's one-time key is missing beside the failure: %+v", claim.OneTimeKeys)
		}
	})
}
