package homeserver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"log/slog"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/lease"
)

// TestLeaseRunnerStopsAndReports: HeldLeases names a singleton only
// while its work runs here (not after its lease was lost), and close
// returns only once the work has returned and the lease is given back,
// so the components it uses may close after it.
func TestLeaseRunnerStopsAndReports(t *testing.T) {
	u := os.Getenv("MYELIN_TEST_REDIS")
	if u == "" {
		t.Skip("set MYELIN_TEST_REDIS to a Redis URL (e.g. redis://127.0.0.1:6379/0) to run this test")
	}
	saved := leaseOptions
	leaseOptions = lease.Options{TTL: 600 * time.Millisecond, Poll: 20 * time.Millisecond}
	t.Cleanup(func() { leaseOptions = saved })
	var b [6]byte
	_, _ = rand.Read(b[:])
	cfg := &config.Config{}
	cfg.Global.RedisURL = u
	cfg.Global.RedisPrefix = "myelin-test:" + hex.EncodeToString(b[:]) + ":"
	key := cfg.Global.RedisPrefix + "lease:worker"
	o, err := redis.ParseURL(u)
	if err != nil {
		t.Fatal(err)
	}
	raw := redis.NewClient(o)
	t.Cleanup(func() { raw.Del(context.Background(), key); raw.Close() })

	var running, returned atomic.Int32
	work := func(ctx context.Context) {
		running.Add(1)
		defer running.Add(-1)
		<-ctx.Done()
		time.Sleep(300 * time.Millisecond) // winding down
		returned.Add(1)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l, err := startLeases(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), []singleton{{"worker", work}})
	if err != nil {
		t.Fatal(err)
	}
	hs := &Homeserver{leases: l}
	waitUntil := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(3 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 3s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	held := func() bool { return len(hs.HeldLeases()) == 1 && hs.HeldLeases()[0] == "worker" }
	waitUntil("the lease is taken and reported", held)

	// Another process takes the key: the work stops, and is no longer
	// reported as running here.
	if err := raw.Set(context.Background(), key, "someone-else", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	waitUntil("the work stops after the lease was lost and is no longer reported", func() bool { return running.Load() == 0 && !held() })
	raw.Del(context.Background(), key)
	waitUntil("the lease is taken again", held)

	cancel()
	if err := l.close(); err != nil {
		t.Fatal(err)
	}
	if running.Load() != 0 || returned.Load() != 2 {
		t.Fatalf("close returned with %d runs of the work going and %d returned, want 0 and 2", running.Load(), returned.Load())
	}
	if n, err := raw.Exists(context.Background(), key).Result(); err != nil || n != 0 {
		t.Fatalf("the lease key exists (%d, %v) after close, want it given back", n, err)
	}
}
