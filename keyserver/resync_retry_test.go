package keyserver_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/keyserver"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// scriptedRemote is a remote server whose GET /user/devices answers are
// chosen per request by answer (n counts the requests, from 1).
type scriptedRemote struct {
	countingRemote
	answer func(n int, userID string) (json.RawMessage, error)
}

func (s *scriptedRemote) RemoteUserDevices(_ context.Context, _, userID string) (json.RawMessage, error) {
	s.mu.Lock()
	s.devices++
	n := s.devices
	s.mu.Unlock()
	return s.answer(n, userID)
}

// remoteStatusError is a remote server's non-2xx answer.
type remoteStatusError int

func (e remoteStatusError) Error() string   { return "the remote answered an error" }
func (e remoteStatusError) HTTPStatus() int { return int(e) }

// devicesAnswer is a /user/devices answer listing devices (each keyed).
func devicesAnswer(t *testing.T, userID string, streamID int64, devices ...*deviceKeys) json.RawMessage {
	list := []any{}
	for _, d := range devices {
		list = append(list, map[string]any{"device_id": d.deviceID, "keys": d.deviceObject(t)})
	}
	raw, _ := json.Marshal(map[string]any{"user_id": userID, "stream_id": streamID, "devices": list})
	return raw
}

// deviceUpdate sends ks an m.device_list_update adding d.
func deviceUpdate(ctx context.Context, t *testing.T, ks *keyserver.Server, d *deviceKeys, streamID int64, prevID ...int64) {
	t.Helper()
	update, _ := json.Marshal(map[string]any{"user_id": d.userID, "device_id": d.deviceID, "stream_id": streamID,
		"prev_id": append([]int64{}, prevID...), "keys": d.deviceObject(t)})
	if err := ks.RemoteDeviceListUpdate(ctx, d.userID, update); err != nil {
		t.Fatal(err)
	}
}

// cacheState is what the key server holds of userID: whether a row
// exists, whether it is stale, and the cached devices.
func cacheState(t *testing.T, db *storage.DB, userID string) (exists, stale bool, devices []string) {
	t.Helper()
	ctx := context.Background()
	err := db.Reader().QueryRow(ctx, `SELECT stale FROM keyserver_remote_users WHERE user_id = $1`, userID).Scan(&stale)
	if err != nil && !storage.IsNoRows(err) {
		t.Fatal(err)
	}
	exists = err == nil
	rows, err := db.Reader().Query(ctx, `SELECT device_id FROM keyserver_remote_device_keys WHERE user_id = $1 ORDER BY device_id`, userID)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var d string
		if err := rows.Scan(&d); err != nil {
			t.Fatal(err)
		}
		devices = append(devices, d)
	}
	return exists, stale, devices
}

// waitIdle waits until no background resync of userID runs or waits to
// retry, and fails the test after limit.
func waitIdle(t *testing.T, ks *keyserver.Server, userID string, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for keyserver.Tracking(ks, userID) || keyserver.Resyncing(ks, userID) {
		if time.Now().After(deadline) {
			t.Fatalf("a background resync of %s still runs after %v", userID, limit)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitFresh waits until userID's cache is fresh and holds want, and
// fails the test, showing the cache and the fetch count, after limit.
func waitFresh(t *testing.T, db *storage.DB, remote *scriptedRemote, userID string, limit time.Duration, want ...string) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		exists, stale, devices := cacheState(t, db, userID)
		if exists && !stale && slices.Equal(devices, want) {
			return
		}
		if time.Now().After(deadline) {
			_, d := remote.counts()
			t.Fatalf("after %v: cache row %v, stale %v, devices %v (want fresh %v); %d GET /user/devices",
				limit, exists, stale, devices, want, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestFailedResyncRetried: a background resync whose GET /user/devices
// fails (a remote that timed out under load) is tried again after a
// backoff, so the tracked user's cache is filled without waiting for the
// next /keys/query; the retry that succeeds is the last request. Spec:
// server-server-api, "Device Management" (a server that missed updates
// resyncs the list); client-server-api, "Tracking the device list for a
// user". It is the flake of federationapi
// TestDehydratedDeviceAcrossServers ("B to cache alice's dehydrated
// device").
func TestFailedResyncRetried(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		const elsie = "@elsie:remote.example"
		device := newDeviceKeys(t, elsie, "DEVICE")
		remote := &scriptedRemote{countingRemote: countingRemote{t: t}}
		remote.answer = func(n int, userID string) (json.RawMessage, error) {
			if n == 1 {
				return nil, context.DeadlineExceeded
			}
			return devicesAnswer(t, userID, 1, device), nil
		}
		ks := keyServerWith(ctx, t, db, remote)
		keyserver.SetResyncBackoff(ks, 20*time.Millisecond, 100*time.Millisecond, 5)
		ks.StartFederation(ctx)

		deviceUpdate(ctx, t, ks, device, 1) // no cache yet: it cannot be applied, so the list is fetched
		waitFresh(t, db, remote, elsie, 10*time.Second, "DEVICE")
		waitIdle(t, ks, elsie, 10*time.Second)
		if q, d := remote.counts(); q != 0 || d != 2 {
			t.Fatalf("a failed resync and its retry: %d /user/keys/query, %d /user/devices; want 0 and 2", q, d)
		}
	})
}

// TestStaleResyncRetried: a resync whose answer may predate an
// m.device_list_update that arrived while it was on its way (the update
// could not be applied to a stale cache, and the running resync kept the
// update from starting another) leaves the cache stale, and the list is
// fetched again at once rather than at the next /keys/query. Spec:
// server-server-api, "Device Management".
func TestStaleResyncRetried(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		const elsie = "@elsie:remote.example"
		first, second := newDeviceKeys(t, elsie, "DEVICE"), newDeviceKeys(t, elsie, "DEVICE2")
		asked, release := make(chan struct{}), make(chan struct{})
		remote := &scriptedRemote{countingRemote: countingRemote{t: t}}
		remote.answer = func(n int, userID string) (json.RawMessage, error) {
			if n == 1 {
				close(asked)
				<-release // the second update arrives meanwhile
				return devicesAnswer(t, userID, 1, first), nil
			}
			return devicesAnswer(t, userID, 2, first, second), nil
		}
		ks := keyServerWith(ctx, t, db, remote)
		keyserver.SetResyncBackoff(ks, 20*time.Millisecond, 100*time.Millisecond, 5)
		ks.StartFederation(ctx)

		deviceUpdate(ctx, t, ks, first, 1)
		<-asked
		deviceUpdate(ctx, t, ks, second, 2, 1)
		close(release)
		waitFresh(t, db, remote, elsie, 10*time.Second, "DEVICE", "DEVICE2")
		waitIdle(t, ks, elsie, 10*time.Second)
		if q, d := remote.counts(); q != 0 || d != 2 {
			t.Fatalf("a resync older than the last update, and the one after it: %d /user/keys/query, %d /user/devices; want 0 and 2", q, d)
		}
	})
}

// TestResyncNotRepeated: in the normal case, one update that cannot be
// applied costs one GET /user/devices, however many resyncs are asked
// for while it runs (a /keys/query waits for the running one), and a
// resync that ended with a fresh cache is not followed by another
// (Complement counts these requests: TestPartialStateJoin "Device list
// tracking", TestDeviceListsUpdateOverFederation).
func TestResyncNotRepeated(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		const elsie = "@elsie:remote.example"
		device := newDeviceKeys(t, elsie, "DEVICE")
		asked, release := make(chan struct{}), make(chan struct{})
		remote := &scriptedRemote{countingRemote: countingRemote{t: t}}
		remote.answer = func(n int, userID string) (json.RawMessage, error) {
			if n == 1 {
				close(asked)
				<-release
			}
			return devicesAnswer(t, userID, 1, device), nil
		}
		ks := keyServerWith(ctx, t, db, remote)
		keyserver.SetResyncBackoff(ks, 20*time.Millisecond, 100*time.Millisecond, 5)
		ks.StartFederation(ctx)

		deviceUpdate(ctx, t, ks, device, 1)
		<-asked
		var wg sync.WaitGroup
		for range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := keyserver.ResyncShared(ctx, ks, elsie); err != nil {
					t.Error(err)
				}
			}()
		}
		time.Sleep(50 * time.Millisecond) // let them find the running resync
		close(release)
		wg.Wait()
		waitFresh(t, db, remote, elsie, 10*time.Second, "DEVICE")
		waitIdle(t, ks, elsie, 10*time.Second)
		time.Sleep(200 * time.Millisecond) // past several backoffs
		if q, d := remote.counts(); q != 0 || d != 1 {
			t.Fatalf("one update and resyncs asked for while it ran: %d /user/keys/query, %d /user/devices; want 0 and 1", q, d)
		}
	})
}

// TestResyncRetriesBounded: a remote that keeps failing is asked a
// bounded number of times, and the cache is left stale (so /keys/query
// asks the server itself); a refusal (404) is not asked again, a 401 is;
// a user who no longer shares a room with a local user is not retried;
// and stopping the server ends a resync waiting to retry.
func TestResyncRetriesBounded(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		// Each on their own server: users of one server share its
		// backoff (TestResyncBackoffSharedPerServer).
		const elsie, frank, gina, hank, ivan = "@elsie:e.example", "@frank:f.example", "@gina:g.example",
			"@hank:h.example", "@ivan:i.example"
		var ginaShares atomic.Bool
		ginaShares.Store(true)
		calls := map[string]*atomic.Int32{elsie: {}, frank: {}, gina: {}, hank: {}, ivan: {}}
		remote := &scriptedRemote{countingRemote: countingRemote{t: t}}
		remote.answer = func(_ int, userID string) (json.RawMessage, error) {
			calls[userID].Add(1)
			switch userID {
			case frank:
				return nil, remoteStatusError(404)
			case ivan:
				return nil, remoteStatusError(401) // it could not fetch our key, say
			case gina:
				ginaShares.Store(false) // she leaves the room while we ask
			}
			return nil, errors.New("connection refused")
		}
		ks, err := keyserver.New(ctx, keyserver.Deps{
			ServerName:  "localhost",
			DB:          db,
			Verifier:    aliceToken{},
			UserDevices: func(context.Context, string) (map[string]string, error) { return map[string]string{}, nil },
			SharedRoomUsers: func(_ context.Context, userID string) ([]string, error) {
				if userID == gina && !ginaShares.Load() {
					return nil, nil
				}
				return []string{"@alice:localhost"}, nil
			},
			Federation: remote,
		})
		if err != nil {
			t.Fatal(err)
		}
		keyserver.SetResyncBackoff(ks, 10*time.Millisecond, 40*time.Millisecond, 4)
		bg, stop := context.WithCancel(ctx)
		ks.StartFederation(bg)

		for _, userID := range []string{elsie, frank, gina, ivan} {
			deviceUpdate(ctx, t, ks, newDeviceKeys(t, userID, "DEVICE"), 1)
		}
		for _, userID := range []string{elsie, frank, gina, ivan} {
			waitIdle(t, ks, userID, 10*time.Second)
		}
		for userID, want := range map[string]int32{elsie: 4, frank: 1, gina: 1, ivan: 4} {
			if got := calls[userID].Load(); got != want {
				t.Errorf("%s: %d GET /user/devices, want %d", userID, got, want)
			}
		}
		if exists, stale, _ := cacheState(t, db, elsie); !exists || !stale {
			t.Errorf("after the retries ran out the cache is not stale (row %v, stale %v)", exists, stale)
		}

		// Stopping the key server ends a resync that waits to retry.
		keyserver.SetResyncBackoff(ks, time.Hour, time.Hour, 4)
		deviceUpdate(ctx, t, ks, newDeviceKeys(t, hank, "DEVICE"), 1)
		for calls[hank].Load() == 0 {
			time.Sleep(5 * time.Millisecond)
		}
		stop()
		waitIdle(t, ks, hank, 5*time.Second)
		if got := calls[hank].Load(); got != 1 {
			t.Errorf("hank: %d GET /user/devices, want 1", got)
		}
	})
}

// TestResyncBackoffSharedPerServer: while a server fails, the
// background resyncs of its many tracked users share one backoff: after
// a first wave of failures (one request per user) the server
// gets one GET /user/devices at a time, a backoff step apart, not one
// per user per step; and every loop still ends after its attempts, leaving the caches
// stale. Once the server answers again its users are fetched. Spec:
// server-server-api, "Device Management".
func TestResyncBackoffSharedPerServer(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		const users, attempts, first = 40, 5, 20 * time.Millisecond
		var down atomic.Bool
		down.Store(true)
		// The first wave (each loop's first request) is held until all
		// are in flight, then fails at once. Every later request is a
		// probe: one at a time, each at least a (jittered: halved)
		// backoff step after the failure before it.
		var mu sync.Mutex
		var waveInFlight, probesInFlight, probes int
		var released bool
		var lastFailure time.Time
		var problems []string
		release := make(chan struct{})
		remote := &scriptedRemote{countingRemote: countingRemote{t: t}}
		remote.answer = func(_ int, userID string) (json.RawMessage, error) {
			mu.Lock()
			probe := released
			if probe {
				probes++
				if probesInFlight > 0 {
					problems = append(problems, fmt.Sprintf("%s asked while %d probes were in flight", userID, probesInFlight))
				}
				if gap := time.Since(lastFailure); gap < first/2-time.Millisecond {
					problems = append(problems, fmt.Sprintf("%s asked %v after the last failure", userID, gap))
				}
				probesInFlight++
			} else {
				waveInFlight++
			}
			mu.Unlock()
			if probe {
				time.Sleep(2 * time.Millisecond)
			} else {
				<-release
			}
			mu.Lock()
			defer mu.Unlock()
			if probe {
				probesInFlight--
			}
			if down.Load() {
				lastFailure = time.Now()
				return nil, errors.New("connection refused")
			}
			return devicesAnswer(t, userID, 1), nil
		}
		ks := keyServerWith(ctx, t, db, remote)
		keyserver.SetResyncBackoff(ks, first, 4*first, attempts)
		ks.StartFederation(ctx)

		var ids []string
		for i := range users {
			id := fmt.Sprintf("@u%d:down.example", i)
			ids = append(ids, id)
			deviceUpdate(ctx, t, ks, newDeviceKeys(t, id, "DEVICE"), 1)
		}
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			mu.Lock()
			n := waveInFlight
			if n == users {
				released = true
			}
			mu.Unlock()
			if n == users {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d first requests made", n, users)
			}
		}
		close(release)
		for _, id := range ids {
			waitIdle(t, ks, id, 20*time.Second)
		}
		mu.Lock()
		if len(problems) > 0 {
			t.Errorf("%d users of a failing server: %v", users, problems)
		}
		_, total := remote.counts()
		t.Logf("%d GET /user/devices in all, %d of them after the first wave", total, probes)
		if probes == 0 || probes > 3*attempts {
			t.Errorf("%d GET /user/devices after the first wave, want 1 to %d", probes, 3*attempts)
		}
		mu.Unlock()
		for _, id := range ids {
			if exists, stale, _ := cacheState(t, db, id); !exists || !stale {
				t.Fatalf("%s: after the retries ran out the cache is not stale (row %v, stale %v)", id, exists, stale)
			}
		}

		// The server is back: an update fetches its user's list.
		down.Store(false)
		time.Sleep(200 * time.Millisecond) // past the backoff
		deviceUpdate(ctx, t, ks, newDeviceKeys(t, ids[0], "DEVICE2"), 2, 1)
		waitFresh(t, db, remote, ids[0], 10*time.Second)
	})
}

// TestBadResyncAnswerNotRetried: a 200 answer to GET /user/devices that
// does not parse, or lists another user's devices, would come again:
// one update costs one request, not one per retry.
func TestBadResyncAnswerNotRetried(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		const wrong, garbled = "@wrong:w.example", "@garbled:g.example"
		calls := map[string]*atomic.Int32{wrong: {}, garbled: {}}
		remote := &scriptedRemote{countingRemote: countingRemote{t: t}}
		remote.answer = func(_ int, userID string) (json.RawMessage, error) {
			calls[userID].Add(1)
			if userID == garbled {
				return json.RawMessage(`{"user_id": 5}`), nil
			}
			return devicesAnswer(t, "@someone_else:w.example", 1, newDeviceKeys(t, "@someone_else:w.example", "X")), nil
		}
		ks := keyServerWith(ctx, t, db, remote)
		keyserver.SetResyncBackoff(ks, 10*time.Millisecond, 40*time.Millisecond, 4)
		ks.StartFederation(ctx)

		for _, id := range []string{wrong, garbled} {
			deviceUpdate(ctx, t, ks, newDeviceKeys(t, id, "DEVICE"), 1)
		}
		for _, id := range []string{wrong, garbled} {
			waitIdle(t, ks, id, 10*time.Second)
		}
		time.Sleep(100 * time.Millisecond) // past several backoffs
		for _, id := range []string{wrong, garbled} {
			if got := calls[id].Load(); got != 1 {
				t.Errorf("%s: %d GET /user/devices for one update, want 1", id, got)
			}
			if _, _, devices := cacheState(t, db, id); len(devices) != 0 {
				t.Errorf("%s: cached %v from a bad answer", id, devices)
			}
		}
	})
}

// TestUpdateDuringLastResyncAttempt: an m.device_list_update that
// arrives while a loop makes its last attempt (which fails) is not
// dropped: it starts a new round of attempts, which fetches the list
// once the server answers; and a new round needs a new update, so a
// server that keeps failing is not asked without end.
func TestUpdateDuringLastResyncAttempt(t *testing.T) {
	for _, failure := range []error{errors.New("connection refused"), remoteStatusError(404)} {
		t.Run(failure.Error(), func(t *testing.T) {
			storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				const elsie = "@elsie:remote.example"
				first, second := newDeviceKeys(t, elsie, "DEVICE"), newDeviceKeys(t, elsie, "DEVICE2")
				last := 2 // the round's last attempt
				if _, ok := failure.(remoteStatusError); ok {
					last = 1 // not retried: its first attempt is its last
				}
				asked, release := make(chan struct{}), make(chan struct{})
				remote := &scriptedRemote{countingRemote: countingRemote{t: t}}
				remote.answer = func(n int, userID string) (json.RawMessage, error) {
					switch {
					case n == last:
						close(asked)
						<-release // the second update arrives meanwhile
						return nil, failure
					case n < last:
						return nil, failure
					}
					return devicesAnswer(t, userID, 2, first, second), nil
				}
				ks := keyServerWith(ctx, t, db, remote)
				keyserver.SetResyncBackoff(ks, 10*time.Millisecond, 40*time.Millisecond, 2)
				ks.StartFederation(ctx)

				deviceUpdate(ctx, t, ks, first, 1)
				<-asked
				deviceUpdate(ctx, t, ks, second, 2, 1)
				close(release)
				waitFresh(t, db, remote, elsie, 10*time.Second, "DEVICE", "DEVICE2")
				waitIdle(t, ks, elsie, 10*time.Second)
				time.Sleep(100 * time.Millisecond)
				if _, d := remote.counts(); d != last+1 {
					t.Fatalf("%d GET /user/devices, want %d", d, last+1)
				}
			})
		})
	}
}

// backingOffRemote is a scriptedRemote whose federation sender says it
// is backing off from the servers in down.
type backingOffRemote struct {
	scriptedRemote
	down map[string]bool
}

func (r *backingOffRemote) DestinationBackingOff(_ context.Context, server string) bool {
	return r.down[server]
}

// TestResyncSkippedWhileSenderBacksOff: a background resync does not
// retry while the federation sender is backing off from the user's
// server (its transactions failed): one request per update, and the
// cache is left stale for the next update or /keys/query; a user of
// another server is retried as before.
func TestResyncSkippedWhileSenderBacksOff(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		const elsie, frank = "@elsie:down.example", "@frank:up.example"
		calls := map[string]*atomic.Int32{elsie: {}, frank: {}}
		remote := &backingOffRemote{scriptedRemote: scriptedRemote{countingRemote: countingRemote{t: t}},
			down: map[string]bool{"down.example": true}}
		remote.answer = func(_ int, userID string) (json.RawMessage, error) {
			calls[userID].Add(1)
			return nil, errors.New("connection refused")
		}
		ks := keyServerWith(ctx, t, db, remote)
		keyserver.SetResyncBackoff(ks, 10*time.Millisecond, 40*time.Millisecond, 4)
		ks.StartFederation(ctx)

		for _, id := range []string{elsie, frank} {
			deviceUpdate(ctx, t, ks, newDeviceKeys(t, id, "DEVICE"), 1)
		}
		for _, id := range []string{elsie, frank} {
			waitIdle(t, ks, id, 10*time.Second)
		}
		for id, want := range map[string]int32{elsie: 1, frank: 4} {
			if got := calls[id].Load(); got != want {
				t.Errorf("%s: %d GET /user/devices, want %d", id, got, want)
			}
		}
		if exists, stale, _ := cacheState(t, db, elsie); !exists || !stale {
			t.Errorf("elsie: the cache is not left stale (row %v, stale %v)", exists, stale)
		}
	})
}

// keyServerWith is keyServerSharingRooms with any remote.
func keyServerWith(ctx context.Context, t *testing.T, db *storage.DB, remote keyserver.RemoteKeys) *keyserver.Server {
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
