package keyserver_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/keyserver"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// aliceToken verifies every token as alice's device.
type aliceToken struct{}

func (aliceToken) VerifyAccessToken(context.Context, string, *http.Request) (*authn.Device, error) {
	return &authn.Device{UserID: "@alice:localhost", DeviceID: "ALICE"}, nil
}

// countingRemote is a remote server that serves one keyed device per
// user and counts the requests of each kind.
type countingRemote struct {
	t       *testing.T
	mu      sync.Mutex
	queries int   // POST /user/keys/query
	devices int   // GET /user/devices
	stream  int64 // the stream_id /user/devices answers; 0 for 2
}

func (c *countingRemote) keys(userID string) map[string]any {
	return newDeviceKeys(c.t, userID, "DEVICE").deviceObject(c.t)
}

func (c *countingRemote) QueryRemoteKeys(_ context.Context, _ string, deviceKeys map[string][]string) (json.RawMessage, error) {
	c.mu.Lock()
	c.queries++
	c.mu.Unlock()
	out := map[string]map[string]any{}
	for userID := range deviceKeys {
		out[userID] = map[string]any{"DEVICE": c.keys(userID)}
	}
	return json.Marshal(map[string]any{"device_keys": out})
}

func (c *countingRemote) ClaimRemoteKeys(context.Context, string, map[string]map[string]string) (json.RawMessage, error) {
	return json.RawMessage(`{"one_time_keys":{}}`), nil
}

func (c *countingRemote) RemoteUserDevices(_ context.Context, _, userID string) (json.RawMessage, error) {
	c.mu.Lock()
	c.devices++
	stream := c.stream
	c.mu.Unlock()
	if stream == 0 {
		stream = 2
	}
	return json.Marshal(map[string]any{"user_id": userID, "stream_id": stream,
		"devices": []any{map[string]any{"device_id": "DEVICE", "keys": c.keys(userID)}}})
}

func (c *countingRemote) counts() (queries, devices int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.queries, c.devices
}

// TestTrackedUserKeysFetchedOnce: /keys/query for a remote user who
// shares a room with a local user fetches their whole device list once
// (GET /user/devices, no /user/keys/query besides) and answers later
// queries from the cache, asking no one; a user who shares no room is
// asked through /user/keys/query every time, and nothing is cached.
// Spec: client-server-api, "Tracking the device list for a user";
// Complement msc3902 "Device list tracked for new members in partial
// state room" (a member who joined a partial-state room after us).
func TestTrackedUserKeysFetchedOnce(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		const elsie, charlie = "@elsie:remote.example", "@charlie:remote.example"
		remote := &countingRemote{t: t}
		ks, err := keyserver.New(ctx, keyserver.Deps{
			ServerName:  "localhost",
			DB:          db,
			Verifier:    aliceToken{},
			UserDevices: func(context.Context, string) (map[string]string, error) { return map[string]string{}, nil },
			SharedRoomUsers: func(_ context.Context, userID string) ([]string, error) {
				if userID == elsie {
					return []string{"@alice:localhost"}, nil
				}
				return nil, nil
			},
			Federation: remote,
		})
		if err != nil {
			t.Fatal(err)
		}
		ks.StartFederation(ctx)
		r := chi.NewRouter()
		ks.Routes(r)
		query := func(userID string) {
			t.Helper()
			body, _ := json.Marshal(map[string]any{"device_keys": map[string][]string{userID: {}}})
			req := httptest.NewRequest(http.MethodPost, "/_matrix/client/v3/keys/query", bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer token")
			w := httptest.NewRecorder()
			r.ServeHTTP(w, req)
			var resp struct {
				DeviceKeys map[string]map[string]json.RawMessage `json:"device_keys"`
			}
			if w.Code != http.StatusOK || json.Unmarshal(w.Body.Bytes(), &resp) != nil || resp.DeviceKeys[userID]["DEVICE"] == nil {
				t.Fatalf("keys/query for %s: %d %s", userID, w.Code, w.Body)
			}
		}

		query(elsie)
		if q, d := remote.counts(); q != 0 || d != 1 {
			t.Fatalf("first query of a tracked user: %d /user/keys/query, %d /user/devices; want 0 and 1", q, d)
		}
		query(elsie)
		if q, d := remote.counts(); q != 0 || d != 1 {
			t.Fatalf("second query of a tracked user asked again: %d /user/keys/query, %d /user/devices", q, d)
		}

		query(charlie)
		query(charlie)
		if q, d := remote.counts(); q != 2 || d != 1 {
			t.Fatalf("queries of an untracked user: %d /user/keys/query, %d /user/devices; want 2 and 1 (elsie's)", q, d)
		}
	})
}

// TestMissedUpdateFetchedOnce: an m.device_list_update of a tracked user
// whose prev_id is not the stream ID we hold (we missed one) makes the
// key server fetch the user's device list (GET /user/devices) once; the
// /keys/query calls after that fetch answer from the cache, asking no
// one. The update and the fetch it starts fall within one millisecond
// here (a frozen clock), as they commonly do: that fetch's answer must
// still count as fresh. Spec: server-server-api, "Device Management";
// client-server-api, "Tracking the device list for a user"; Complement
// msc3902 "Device list tracked for new members in partial state room".
func TestMissedUpdateFetchedOnce(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		const elsie = "@elsie:remote.example"
		remote := &countingRemote{t: t}
		ks := keyServerSharingRooms(ctx, t, db, remote)
		frozen := time.Now().UnixMilli()
		keyserver.SetClock(ks, func() int64 { return frozen })
		ks.StartFederation(ctx)
		r := chi.NewRouter()
		ks.Routes(r)
		query := func() map[string]json.RawMessage {
			t.Helper()
			body, _ := json.Marshal(map[string]any{"device_keys": map[string][]string{elsie: {}}})
			req := httptest.NewRequest(http.MethodPost, "/_matrix/client/v3/keys/query", bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer token")
			w := httptest.NewRecorder()
			r.ServeHTTP(w, req)
			var resp struct {
				DeviceKeys map[string]map[string]json.RawMessage `json:"device_keys"`
			}
			if w.Code != http.StatusOK || json.Unmarshal(w.Body.Bytes(), &resp) != nil || resp.DeviceKeys[elsie]["DEVICE"] == nil {
				t.Fatalf("keys/query: %d %s", w.Code, w.Body)
			}
			return resp.DeviceKeys[elsie]
		}

		query()
		if q, d := remote.counts(); q != 0 || d != 1 {
			t.Fatalf("first query: %d /user/keys/query, %d /user/devices; want 0 and 1", q, d)
		}

		// Stream ID 4 after 3, which we never saw: we hold 2.
		remote.mu.Lock()
		remote.stream = 4
		remote.mu.Unlock()
		update, _ := json.Marshal(map[string]any{"user_id": elsie, "device_id": "DEVICE", "stream_id": 4,
			"prev_id": []int{3}, "keys": remote.keys(elsie)})
		if err := ks.RemoteDeviceListUpdate(ctx, elsie, update); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			if _, d := remote.counts(); d == 2 && !keyserver.Resyncing(ks, elsie) {
				break
			}
			if time.Now().After(deadline) {
				q, d := remote.counts()
				t.Fatalf("no resync after a missed update: %d /user/keys/query, %d /user/devices", q, d)
			}
			time.Sleep(5 * time.Millisecond)
		}

		query()
		query()
		if q, d := remote.counts(); q != 0 || d != 2 {
			t.Fatalf("queries after the resync of one update: %d /user/keys/query, %d /user/devices; want 0 and 2", q, d)
		}

		// The next update names 4, which we hold: it is applied, and
		// nobody is asked.
		update, _ = json.Marshal(map[string]any{"user_id": elsie, "device_id": "DEVICE2", "stream_id": 5,
			"prev_id": []int{4}, "keys": newDeviceKeys(t, elsie, "DEVICE2").deviceObject(t)})
		if err := ks.RemoteDeviceListUpdate(ctx, elsie, update); err != nil {
			t.Fatal(err)
		}
		if devices := query(); devices["DEVICE2"] == nil {
			t.Fatalf("the update that follows the one we hold was not applied: %v", devices)
		}
		if q, d := remote.counts(); q != 0 || d != 2 || keyserver.Resyncing(ks, elsie) {
			t.Fatalf("an update that follows the one we hold made us ask: %d /user/keys/query, %d /user/devices", q, d)
		}
	})
}

// TestResyncAfterResyncAsksNoOne: a resync that starts when another has
// just left the cache fresh (the one an update started finished while a
// /keys/query that had seen the cache stale was on its way to starting
// its own) asks no one: the list was fetched already. One that finds the
// cache stale fetches it. Spec: server-server-api, "Device Management"
// (one fetch per missed update); Complement msc3902 "Device list
// tracked for new members in partial state room".
func TestResyncAfterResyncAsksNoOne(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		const elsie = "@elsie:remote.example"
		remote := &countingRemote{t: t}
		ks := keyServerSharingRooms(ctx, t, db, remote)
		ks.StartFederation(ctx)
		if err := keyserver.ResyncShared(ctx, ks, elsie); err != nil {
			t.Fatal(err)
		}
		if q, d := remote.counts(); q != 0 || d != 1 {
			t.Fatalf("first resync: %d /user/keys/query, %d /user/devices; want 0 and 1", q, d)
		}
		if err := keyserver.ResyncShared(ctx, ks, elsie); err != nil {
			t.Fatal(err)
		}
		if q, d := remote.counts(); q != 0 || d != 1 {
			t.Fatalf("a resync after one that left the cache fresh asked: %d /user/keys/query, %d /user/devices; want 0 and 1", q, d)
		}

		// A signing-key update marks the cache stale: the next resync asks.
		if err := ks.RemoteSigningKeyUpdate(ctx, elsie, json.RawMessage(`{"user_id":"`+elsie+`"}`)); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			if _, d := remote.counts(); d == 2 && !keyserver.Resyncing(ks, elsie) {
				break
			}
			if time.Now().After(deadline) {
				q, d := remote.counts()
				t.Fatalf("no resync after a signing-key update: %d /user/keys/query, %d /user/devices", q, d)
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
}

// keyServerSharingRooms starts a key server whose local user
// @alice:localhost shares a room with every remote user, so each remote
// user's device list is tracked, and whose federation is remote.
func keyServerSharingRooms(ctx context.Context, t *testing.T, db *storage.DB, remote *countingRemote) *keyserver.Server {
	t.Helper()
	ks, err := keyserver.New(ctx, keyserver.Deps{
		ServerName:  "localhost",
		DB:          db,
		Verifier:    aliceToken{},
		UserDevices: func(context.Context, string) (map[string]string, error) { return map[string]string{}, nil },
		SharedRoomUsers: func(context.Context, string) ([]string, error) {
			return []string{"@alice:localhost"}, nil
		},
		Federation: remote,
	})
	if err != nil {
		t.Fatal(err)
	}
	return ks
}
