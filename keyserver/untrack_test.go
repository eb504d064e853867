package keyserver_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/keyserver"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// gatedRemote is a countingRemote whose GET /user/devices, while gate is
// set, says it started (entered) and waits for gate to close.
type gatedRemote struct {
	countingRemote
	gate    chan struct{}
	entered chan struct{}
}

func (g *gatedRemote) RemoteUserDevices(ctx context.Context, server, userID string) (json.RawMessage, error) {
	g.mu.Lock()
	gate, entered := g.gate, g.entered
	g.mu.Unlock()
	if gate != nil {
		entered <- struct{}{}
		<-gate
	}
	return g.countingRemote.RemoteUserDevices(ctx, server, userID)
}

// hold makes the next fetches wait; the returned function lets them go.
func (g *gatedRemote) hold() (entered <-chan struct{}, release func()) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.gate, g.entered = make(chan struct{}), make(chan struct{}, 4)
	gate := g.gate
	return g.entered, func() {
		g.mu.Lock()
		g.gate = nil
		g.mu.Unlock()
		close(gate)
	}
}

// remoteRow reads userID's keyserver_remote_users row: whether there is
// one, whether it is stale, and how many device and cross-signing keys
// are cached for them.
func remoteRow(t *testing.T, db *storage.DB, userID string) (exists, stale bool, keys int) {
	t.Helper()
	ctx := context.Background()
	err := db.Reader().QueryRow(ctx, `SELECT stale FROM keyserver_remote_users WHERE user_id = $1`, userID).Scan(&stale)
	if err != nil && !storage.IsNoRows(err) {
		t.Fatal(err)
	}
	if err := db.Reader().QueryRow(ctx, `SELECT (SELECT COUNT(*) FROM keyserver_remote_device_keys WHERE user_id = $1)
		+ (SELECT COUNT(*) FROM keyserver_remote_cross_signing_keys WHERE user_id = $1)`, userID).Scan(&keys); err != nil {
		t.Fatal(err)
	}
	return err == nil, stale, keys
}

// untrackingKeyServer starts a key server whose in-transaction sharing
// check names the users in shared (guarded by mu).
func untrackingKeyServer(ctx context.Context, t *testing.T, db *storage.DB, remote keyserver.RemoteKeys, mu *sync.Mutex, shared map[string]bool) *keyserver.Server {
	t.Helper()
	ks, err := keyserver.New(ctx, keyserver.Deps{
		ServerName:  "localhost",
		DB:          db,
		Verifier:    aliceToken{},
		UserDevices: func(context.Context, string) (map[string]string, error) { return map[string]string{}, nil },
		SharedRoomUsers: func(context.Context, string) ([]string, error) {
			return []string{"@alice:localhost"}, nil
		},
		SharedInTx: func(_ context.Context, _ storage.Querier, userIDs []string) ([]string, error) {
			mu.Lock()
			defer mu.Unlock()
			var out []string
			for _, u := range userIDs {
				if shared[u] {
					out = append(out, u)
				}
			}
			return out, nil
		},
		Federation: remote,
	})
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

// TestUntrackInTx: of the users a member event may leave sharing no room
// with a local user, those with a cached device list are checked (only
// they), and those who share no room any more lose their cached device
// and cross-signing keys and keep a stale row, so that sharing a room
// again fetches the list afresh; one still sharing a room keeps a fresh
// cache; users without a cache, and local users, get no row. Spec:
// client-server-api, "Tracking the device list for a user".
func TestUntrackInTx(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		const gone, stays, never, local = "@gone:remote.example", "@stays:remote.example", "@never:remote.example", "@bob:localhost"
		var mu sync.Mutex
		ks := untrackingKeyServer(ctx, t, db, &countingRemote{t: t}, &mu, map[string]bool{gone: true, stays: true})
		for _, u := range []string{gone, stays} {
			if err := ks.Resync(ctx, u); err != nil {
				t.Fatal(err)
			}
		}
		if err := db.Write(ctx, func(tx storage.Tx) error {
			_, err := tx.Exec(ctx, `INSERT INTO keyserver_remote_cross_signing_keys (user_id, key_type, key_json) VALUES ($1, 'master', '{}')`, gone)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if _, stale, keys := remoteRow(t, db, gone); stale || keys != 2 {
			t.Fatalf("before: %s's row stale %v with %d keys, want fresh with 2", gone, stale, keys)
		}

		var asked []string
		if err := db.Write(ctx, func(tx storage.Tx) error {
			asked = nil
			return keyserver.UntrackInTx(ctx, tx, db.Engine(), "localhost", []string{gone, stays, never, local},
				func(_ context.Context, _ storage.Querier, userIDs []string) ([]string, error) {
					asked = append(asked, userIDs...)
					return []string{stays}, nil
				}, time.Now().UnixMilli())
		}); err != nil {
			t.Fatal(err)
		}
		slices.Sort(asked)
		if want := []string{gone, stays}; !slices.Equal(asked, want) {
			t.Errorf("users checked against the rooms: %v, want those with a cache %v", asked, want)
		}
		if exists, stale, keys := remoteRow(t, db, gone); !exists || !stale || keys != 0 {
			t.Errorf("%s, who shares no room: row %v, stale %v, %d keys; want a stale row and no keys", gone, exists, stale, keys)
		}
		if exists, stale, keys := remoteRow(t, db, stays); !exists || stale || keys != 1 {
			t.Errorf("%s, still sharing a room: row %v, stale %v, %d keys; want the fresh cache kept", stays, exists, stale, keys)
		}
		for _, u := range []string{never, local} {
			if exists, _, _ := remoteRow(t, db, u); exists {
				t.Errorf("%s, with no cache, got a row", u)
			}
		}
	})
}

// TestResyncUnderwayWhenUntracked: a fetch of a remote user's device
// list that is on its way when they stop sharing every room with a
// local user is not stored as a fresh copy: not when UntrackInTx marked
// the row they had (it is kept, stale, rather than deleted, and the
// resync sees it changed), nor when they had no row yet (the resync
// checks, in its own transaction, that they still share a room).
// Otherwise the copy, fetched before they left, would be served when
// they share a room again. Spec: client-server-api, "Tracking the device
// list for a user".
func TestResyncUnderwayWhenUntracked(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		const cached, uncached = "@cached:remote.example", "@uncached:remote.example"
		var mu sync.Mutex
		shared := map[string]bool{cached: true, uncached: true}
		remote := &gatedRemote{countingRemote: countingRemote{t: t}}
		ks := untrackingKeyServer(ctx, t, db, remote, &mu, shared)
		if err := ks.Resync(ctx, cached); err != nil {
			t.Fatal(err)
		}

		// cached: the row is marked while the resync's fetch waits; the
		// sharing check still names them, so only the row tells.
		entered, release := remote.hold()
		done := make(chan error, 1)
		go func() { done <- ks.Resync(ctx, cached) }()
		<-entered
		if err := db.Write(ctx, func(tx storage.Tx) error {
			return keyserver.UntrackInTx(ctx, tx, db.Engine(), "localhost", []string{cached},
				func(context.Context, storage.Querier, []string) ([]string, error) { return nil, nil }, time.Now().UnixMilli())
		}); err != nil {
			t.Fatal(err)
		}
		release()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if exists, stale, _ := remoteRow(t, db, cached); !exists || !stale {
			t.Errorf("%s: after a resync under way when they were untracked, row %v stale %v; want stale", cached, exists, stale)
		}

		// uncached: no row to mark; they stop sharing while the fetch
		// waits.
		entered, release = remote.hold()
		go func() { done <- ks.Resync(ctx, uncached) }()
		<-entered
		mu.Lock()
		shared[uncached] = false
		mu.Unlock()
		release()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if _, stale, keys := remoteRow(t, db, uncached); !stale || keys != 0 {
			t.Errorf("%s: a resync that ended after they stopped sharing rooms stored a fresh copy (stale %v, %d keys)", uncached, stale, keys)
		}
	})
}

// TestUntrackSweepAfterUpgrade: the first start after the upgrade to
// migration 006 drops, once, the cached device lists that older binaries
// kept for remote users who share no room with a local user (their
// device and cross-signing keys go; the row stays, stale, so that
// sharing a room again fetches the list afresh), and keeps those of
// users still sharing a room; a later start checks nothing again. Rows
// are written as the older binaries left them: fresh, with keys.
// Spec: client-server-api, "Tracking the device list for a user".
func TestUntrackSweepAfterUpgrade(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		const gone, stays = "@gone:remote.example", "@stays:remote.example"
		if err := keyserver.MigrateTo(ctx, db, 5); err != nil {
			t.Fatal(err)
		}
		if err := db.Write(ctx, func(tx storage.Tx) error {
			for _, u := range []string{gone, stays} {
				for _, q := range []string{
					`INSERT INTO keyserver_remote_users (user_id, stream_id, stale, updated_ts) VALUES ($1, 7, FALSE, 1)`,
					`INSERT INTO keyserver_remote_device_keys (user_id, device_id, key_json) VALUES ($1, 'DEV', '{}')`,
					`INSERT INTO keyserver_remote_cross_signing_keys (user_id, key_type, key_json) VALUES ($1, 'master', '{}')`,
				} {
					if _, err := tx.Exec(ctx, q, u); err != nil {
						return err
					}
				}
			}
			// More than one batch of users sharing no room, with no keys.
			for i := range 520 {
				if _, err := tx.Exec(ctx, `INSERT INTO keyserver_remote_users (user_id, stream_id, stale, updated_ts) VALUES ($1, 1, FALSE, 1)`,
					fmt.Sprintf("@g%03d:remote.example", i)); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}

		var mu sync.Mutex
		shared := map[string]bool{stays: true}
		untrackingKeyServer(ctx, t, db, &countingRemote{t: t}, &mu, shared)
		if exists, stale, keys := remoteRow(t, db, gone); !exists || !stale || keys != 0 {
			t.Errorf("%s, sharing no room at the upgrade: row %v, stale %v, %d keys; want a stale row and no keys", gone, exists, stale, keys)
		}
		if exists, stale, keys := remoteRow(t, db, stays); !exists || stale || keys != 2 {
			t.Errorf("%s, still sharing a room: row %v, stale %v, %d keys; want the fresh cache kept", stays, exists, stale, keys)
		}
		var fresh int
		if err := db.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM keyserver_remote_users WHERE NOT stale`).Scan(&fresh); err != nil {
			t.Fatal(err)
		}
		if fresh != 1 {
			t.Errorf("%d fresh caches after the sweep, want 1 (%s's)", fresh, stays)
		}

		// Once: the next start leaves a cache alone even if its user
		// shares no room (the transaction that ended the sharing is the
		// one that untracks, from now on).
		mu.Lock()
		shared[stays] = false
		mu.Unlock()
		untrackingKeyServer(ctx, t, db, &countingRemote{t: t}, &mu, shared)
		if _, stale, keys := remoteRow(t, db, stays); stale || keys != 2 {
			t.Errorf("%s after a second start: stale %v, %d keys; want the sweep not run again", stays, stale, keys)
		}
	})
}
