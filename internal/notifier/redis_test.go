package notifier

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisTestEnv names the variable holding the Redis URL for tests.
const redisTestEnv = "MYELIN_TEST_REDIS"

// testRedisURL returns the Redis URL for tests, or skips the test.
func testRedisURL(t *testing.T) string {
	t.Helper()
	u := os.Getenv(redisTestEnv)
	if u == "" {
		t.Skipf("Redis test skipped: set %s to a Redis URL (e.g. redis://127.0.0.1:6379/0) to run it", redisTestEnv)
	}
	return u
}

// testPrefix returns a key prefix no other test uses, and deletes its
// keys when the test ends.
func testPrefix(t *testing.T, rawURL string) string {
	t.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	prefix := "myelin-test:" + hex.EncodeToString(b[:]) + ":"
	t.Cleanup(func() {
		c := rawClient(t, rawURL)
		c.Del(context.Background(), prefix+redisHashSuffix)
	})
	return prefix
}

// rawClient is a plain go-redis client, closed when the test ends.
func rawClient(t *testing.T, rawURL string) *redis.Client {
	t.Helper()
	o, err := redis.ParseURL(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(o)
	t.Cleanup(func() { c.Close() })
	return c
}

// startRedis starts a Redis broadcaster, closed when the test ends.
func startRedis(t *testing.T, rawURL, prefix string, edit func(*RedisOptions)) *Redis {
	t.Helper()
	opts := RedisOptions{URL: rawURL, Prefix: prefix, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if edit != nil {
		edit(&opts)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := NewRedis(ctx, opts)
	if err != nil {
		t.Fatalf("NewRedis: %v", err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return r
}

// waitPosition waits until b has heard stream at pos or more, and
// returns how long that took.
func waitPosition(t *testing.T, b Broadcaster, stream string, pos int64, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	for {
		ch := b.Changed()
		if b.Positions()[stream] >= pos {
			return time.Since(start)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			t.Fatalf("%s did not reach %d within %v (at %d)", stream, pos, within, b.Positions()[stream])
		}
	}
}

// TestRedisNotifyWakesOtherProcess: two broadcasters on one Redis, as two
// processes would have; a Notify on one wakes a waiter on the other.
func TestRedisNotifyWakesOtherProcess(t *testing.T) {
	u := testRedisURL(t)
	prefix := testPrefix(t, u)
	a := startRedis(t, u, prefix, nil)
	b := startRedis(t, u, prefix, nil)

	since := b.Positions()
	woke := make(chan Positions, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		got, err := WaitPast(ctx, b, since)
		if err != nil {
			t.Errorf("waiter on b: %v", err)
		}
		woke <- got
	}()
	time.Sleep(20 * time.Millisecond)
	select {
	case <-woke:
		t.Fatal("b's waiter woke before any Notify")
	default:
	}
	start := time.Now()
	a.Notify("room_events", 5)
	// Local waiters on a see it at once, without Redis.
	if a.Position("room_events") != 5 {
		t.Fatalf("a's own position = %d after Notify", a.Position("room_events"))
	}
	select {
	case got := <-woke:
		if got["room_events"] != 5 {
			t.Fatalf("b's waiter saw %v", got)
		}
		// Without the publish b would not wake at all (no poll here);
		// the bound is for a delivery that lags, with room for a
		// loaded machine.
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("b woke after %v", d)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("b's waiter did not wake")
	}
	if b.Position("room_events") != 5 {
		t.Fatalf("b's position = %d", b.Position("room_events"))
	}
	// And the other way round, on another stream.
	b.Notify("receipts", 3)
	waitPosition(t, a, "receipts", 3, 15*time.Second)
}

// TestRedisIgnoresSmallerPositions: positions only grow, in each process
// and in the shared hash, whatever order messages arrive in.
func TestRedisIgnoresSmallerPositions(t *testing.T) {
	u := testRedisURL(t)
	prefix := testPrefix(t, u)
	a := startRedis(t, u, prefix, nil)
	b := startRedis(t, u, prefix, nil)
	raw := rawClient(t, u)
	ctx := context.Background()

	a.Notify("s", 10)
	waitPosition(t, b, "s", 10, 15*time.Second)

	// Watch every value b takes from now on.
	var mu sync.Mutex
	var seen []int64
	stop := make(chan struct{})
	watching := make(chan struct{})
	go func() {
		defer close(watching)
		for {
			ch := b.Changed()
			mu.Lock()
			seen = append(seen, b.Position("s"))
			mu.Unlock()
			select {
			case <-ch:
			case <-stop:
				return
			}
		}
	}()
	a.Notify("s", 7) // smaller: a keeps 10
	if a.Position("s") != 10 {
		t.Fatalf("a lowered to %d", a.Position("s"))
	}
	// Out-of-order and malformed messages straight on the channel.
	for _, msg := range []string{"s 7", "s 10", "s 3", "garbage", "s notanumber", "s 11"} {
		if err := raw.Publish(ctx, prefix+redisChannelSuffix, msg).Err(); err != nil {
			t.Fatal(err)
		}
	}
	waitPosition(t, b, "s", 11, 15*time.Second)
	close(stop)
	<-watching
	mu.Lock()
	for _, p := range seen {
		if p < 10 {
			t.Errorf("b went back to %d (saw %v)", p, seen)
		}
	}
	mu.Unlock()

	// The hash keeps the maximum: the script neither lowers it nor
	// publishes a smaller position.
	sub := raw.Subscribe(ctx, prefix+redisChannelSuffix)
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil { // subscription confirmed
		t.Fatal(err)
	}
	raised, err := raiseAndPublish.Run(ctx, raw, []string{prefix + redisHashSuffix, prefix + redisChannelSuffix}, "s", 4, "t", 2).Int()
	if err != nil || raised != 1 {
		t.Fatalf("script raised %d (%v), want 1 (only t)", raised, err)
	}
	if v := raw.HGet(ctx, prefix+redisHashSuffix, "s").Val(); v != "10" {
		// 11 was published raw, bypassing the hash; a's 10 is the max written.
		t.Fatalf("hash s = %q, want 10", v)
	}
	msg, err := sub.ReceiveMessage(ctx)
	if err != nil || msg.Payload != "t 2" {
		t.Fatalf("first message after the script = %v (%v), want \"t 2\" (no \"s 4\")", msg, err)
	}
}

// TestRedisLateStarterSeedsPositions: a process started later learns the
// current positions from the hash before its first notification.
func TestRedisLateStarterSeedsPositions(t *testing.T) {
	u := testRedisURL(t)
	prefix := testPrefix(t, u)
	a := startRedis(t, u, prefix, nil)
	b := startRedis(t, u, prefix, nil)
	a.Notify("room_events", 42)
	a.Notify("to_device", 7)
	b.Notify("room_events", 40) // smaller than what b hears from a: not published
	waitPosition(t, b, "room_events", 42, 15*time.Second)
	waitPosition(t, b, "to_device", 7, 15*time.Second)

	c := startRedis(t, u, prefix, nil)
	got := c.Positions()
	if got["room_events"] != 42 || got["to_device"] != 7 || len(got) != 2 {
		t.Fatalf("late starter seeded %v, want room_events 42, to_device 7", got)
	}
	// Another prefix is another deployment: nothing seeded.
	if other := startRedis(t, u, testPrefix(t, u), nil).Positions(); len(other) != 0 {
		t.Fatalf("a different prefix seeded %v", other)
	}
}

// TestRedisLocalStreamsStayLocal: a per-process stream (typing) is
// neither published nor taken from Redis.
func TestRedisLocalStreamsStayLocal(t *testing.T) {
	u := testRedisURL(t)
	prefix := testPrefix(t, u)
	local := func(o *RedisOptions) { o.LocalStreams = []string{"typing"} }
	a := startRedis(t, u, prefix, local)
	b := startRedis(t, u, prefix, local)
	raw := rawClient(t, u)

	a.Notify("typing", 1_700_000_000_000)
	b.Notify("typing", 5) // b's own counter, far below a's: must still wake b
	if a.Position("typing") != 1_700_000_000_000 || b.Position("typing") != 5 {
		t.Fatalf("typing: a %d, b %d", a.Position("typing"), b.Position("typing"))
	}
	_ = raw.Publish(context.Background(), prefix+redisChannelSuffix, "typing 99").Err()
	a.Notify("room_events", 1) // a shared stream after it, as a marker
	waitPosition(t, b, "room_events", 1, 15*time.Second)
	if b.Position("typing") != 5 {
		t.Fatalf("b took typing %d from Redis", b.Position("typing"))
	}
	if n, _ := raw.HExists(context.Background(), prefix+redisHashSuffix, "typing").Result(); n {
		t.Fatal("typing was written to the hash")
	}
}

// TestRedisSubscriberReseedsAfterReconnect: when Redis drops the
// subscriber's connection (CLIENT KILL), it resubscribes, and reads the
// hash so that what was published while it was away is not missed.
func TestRedisSubscriberReseedsAfterReconnect(t *testing.T) {
	u := testRedisURL(t)
	prefix := testPrefix(t, u)
	raw := rawClient(t, u)
	ctx := context.Background()
	a := startRedis(t, u, prefix, nil)
	name := "myelin-test-" + strings.Trim(strings.ReplaceAll(prefix, ":", "-"), "-")
	b := startRedis(t, withClientName(t, u, name), prefix, func(o *RedisOptions) {
		// Long enough to publish while b is away, even on a loaded
		// machine (1.5 s was close: the publish below may take a while).
		o.minBackoff = 5 * time.Second
	})
	a.Notify("s", 1)
	waitPosition(t, b, "s", 1, 15*time.Second)

	id := subscriberID(t, raw, name)
	if id == "" {
		t.Fatal("b's subscription is not in CLIENT LIST")
	}
	if err := raw.Do(ctx, "CLIENT", "KILL", "ID", id).Err(); err != nil {
		t.Fatal(err)
	}
	a.Notify("s", 2)
	deadline := time.Now().Add(4 * time.Second)
	for raw.HGet(ctx, prefix+redisHashSuffix, "s").Val() != "2" {
		if time.Now().After(deadline) {
			t.Fatal("a's Notify did not reach the hash")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// "s 2" was published while b had no subscription, so only the
	// reseed after resubscribing can bring it.
	if subscriberID(t, raw, name) != "" {
		t.Fatal("b resubscribed before the publish; the test cannot tell reseeding from delivery")
	}
	if b.Position("s") != 1 {
		t.Fatalf("b at %d while unsubscribed", b.Position("s"))
	}
	waitPosition(t, b, "s", 2, 15*time.Second)
	// And the new subscription delivers.
	a.Notify("s", 3)
	waitPosition(t, b, "s", 3, 15*time.Second)
}

// withClientName adds client_name to a Redis URL, so the test can find
// the connections in CLIENT LIST.
func withClientName(t *testing.T, rawURL, name string) string {
	t.Helper()
	pu, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	q := pu.Query()
	q.Set("client_name", name)
	pu.RawQuery = q.Encode()
	return pu.String()
}

// subscriberID returns the CLIENT LIST id of the subscribed connection
// named name, or "".
func subscriberID(t *testing.T, c *redis.Client, name string) string {
	t.Helper()
	list, err := c.ClientList(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(strings.NewReader(list))
	for sc.Scan() {
		fields := map[string]string{}
		for _, f := range strings.Fields(sc.Text()) {
			k, v, _ := strings.Cut(f, "=")
			fields[k] = v
		}
		if fields["name"] == name && fields["sub"] != "" && fields["sub"] != "0" {
			return fields["id"]
		}
	}
	return ""
}

// TestRedisOutage: Redis stops answering (a proxy between a broadcaster
// and Redis black-holes every byte). Notify keeps returning at once and
// waking local waiters; the publisher drops and logs once; the
// subscriber notices the dead connection by its PING and resubscribes
// when Redis is back.
func TestRedisOutage(t *testing.T) {
	u := testRedisURL(t)
	prefix := testPrefix(t, u)
	p := newBlackholeProxy(t, u)
	logs := &logRecorder{}
	// Intervals short enough for a quick test, long enough that a
	// loaded machine answering a PING late is not taken for a dead
	// connection (200 ms gave the answer 200 ms).
	fast := func(o *RedisOptions) {
		o.publishTimeout = 2 * time.Second
		o.logEvery = time.Hour
		o.minBackoff = 50 * time.Millisecond
		o.maxBackoff = 200 * time.Millisecond
		o.healthEvery = time.Second
		o.Logger = slog.New(logs)
	}
	a := startRedis(t, p.url, prefix, fast) // publishes through the proxy
	c := startRedis(t, p.url, prefix, fast) // listens through the proxy
	direct := startRedis(t, u, prefix, nil) // listens without the proxy
	a.Notify("s", 1)
	waitPosition(t, c, "s", 1, 15*time.Second)
	waitPosition(t, direct, "s", 1, 15*time.Second)
	// A quiet but healthy subscription survives its health checks
	// (a PING after each quiet second).
	time.Sleep(3500 * time.Millisecond)
	if n := logs.count("notifier: redis subscription lost"); n != 0 {
		t.Fatalf("a healthy quiet subscription was reset; logs: %v", logs.messages())
	}

	p.blackhole()
	// Notify for longer than a publish timeout; none may wait.
	var slowest time.Duration
	pos := int64(1)
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); {
		for i := 0; i < 100; i++ {
			pos++
			start := time.Now()
			a.Notify("s", pos)
			slowest = max(slowest, time.Since(start))
		}
		time.Sleep(20 * time.Millisecond)
	}
	// A Notify waiting on Redis would take up to publishTimeout (2 s);
	// one that does not takes microseconds, whatever the load.
	if slowest > time.Second {
		t.Errorf("a Notify took %v while Redis was unreachable", slowest)
	}
	if a.Position("s") != pos {
		t.Fatalf("a's local position = %d, want %d", a.Position("s"), pos)
	}
	// Several publishes failed (one logged, the rest suppressed).
	deadline := time.Now().Add(20 * time.Second)
	for {
		a.dropLog.mu.Lock()
		suppressed := a.dropLog.suppressed
		a.dropLog.mu.Unlock()
		if suppressed > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no second publish failure; logs: %v", logs.messages())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := logs.count("notifier: cannot publish to redis"); n != 1 {
		t.Fatalf("logged %d publish warnings, want 1 (rate-limited); logs: %v", n, logs.messages())
	}
	if direct.Position("s") != 1 {
		t.Fatalf("the direct listener heard %d through a black hole", direct.Position("s"))
	}
	// c's connection never closed: only its PING can tell it, within
	// two health intervals of the black hole.
	for deadline := time.Now().Add(20 * time.Second); logs.count("notifier: redis subscription lost") == 0; {
		if time.Now().After(deadline) {
			t.Fatalf("c did not notice the dead subscription; logs: %v", logs.messages())
		}
		time.Sleep(20 * time.Millisecond)
	}

	p.restore()
	pos++
	a.Notify("s", pos)
	waitPosition(t, direct, "s", pos, 15*time.Second)
	waitPosition(t, c, "s", pos, 15*time.Second)
	// c is subscribed again (not just reseeded): a new Notify arrives.
	pos++
	a.Notify("s", pos)
	waitPosition(t, c, "s", pos, 15*time.Second)
}

// blackholeProxy forwards TCP to Redis until blackhole is called; then it
// swallows every byte on open connections and holds new ones silent,
// like a peer that vanished without closing. restore closes what it holds
// and forwards again.
type blackholeProxy struct {
	url      string
	upstream string
	ln       net.Listener

	mu     sync.Mutex
	down   bool       // guarded by mu
	conns  []net.Conn // guarded by mu
	closed bool       // guarded by mu
}

func newBlackholeProxy(t *testing.T, rawURL string) *blackholeProxy {
	t.Helper()
	o, err := redis.ParseURL(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pu, _ := url.Parse(rawURL)
	pu.Host = ln.Addr().String()
	p := &blackholeProxy{url: pu.String(), upstream: o.Addr, ln: ln}
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *blackholeProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		down, closed := p.down, p.closed
		if !closed {
			p.conns = append(p.conns, c)
		}
		p.mu.Unlock()
		if closed {
			c.Close()
			return
		}
		if down {
			go io.Copy(io.Discard, c) // held open, never answered
			continue
		}
		up, err := net.Dial("tcp", p.upstream)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, up)
		p.mu.Unlock()
		go p.pipe(c, up)
		go p.pipe(up, c)
	}
}

// pipe copies from src to dst, discarding while the proxy is down.
func (p *blackholeProxy) pipe(src, dst net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			down := p.down
			p.mu.Unlock()
			if !down {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

func (p *blackholeProxy) blackhole() {
	p.mu.Lock()
	p.down = true
	p.mu.Unlock()
}

func (p *blackholeProxy) restore() {
	p.mu.Lock()
	p.down = false
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

func (p *blackholeProxy) close() {
	p.mu.Lock()
	p.closed = true
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	p.ln.Close()
	for _, c := range conns {
		c.Close()
	}
}

// logRecorder is a slog.Handler keeping every message.
type logRecorder struct {
	mu   sync.Mutex
	msgs []string
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.msgs = append(l.msgs, r.Message)
	return nil
}
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecorder) WithGroup(string) slog.Handler      { return l }

func (l *logRecorder) messages() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.msgs...)
}

func (l *logRecorder) count(prefix string) int {
	n := 0
	for _, m := range l.messages() {
		if strings.HasPrefix(m, prefix) {
			n++
		}
	}
	return n
}

// TestRedisStartFailsWithoutRedis: a configured but unreachable Redis is
// an error at start, not a silent single-process mode.
func TestRedisStartFailsWithoutRedis(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := NewRedis(ctx, RedisOptions{URL: "redis://" + addr + "/0", Prefix: "x:"})
	if err == nil {
		r.Close()
		t.Fatal("NewRedis succeeded with nothing listening")
	}
	if _, err := NewRedis(ctx, RedisOptions{URL: "http://" + addr}); err == nil {
		t.Fatal("NewRedis accepted an http:// URL")
	}
}

func TestParseNotification(t *testing.T) {
	for _, tc := range []struct {
		in     string
		stream string
		pos    int64
		ok     bool
	}{
		{"room_events 12", "room_events", 12, true},
		{"a b 3", "a b", 3, true},
		{"room_events", "", 0, false},
		{" 4", "", 0, false},
		{"s x", "", 0, false},
		{"s 99999999999999999999", "", 0, false},
	} {
		s, p, ok := parseNotification(tc.in)
		if s != tc.stream || p != tc.pos || ok != tc.ok {
			t.Errorf("parseNotification(%q) = %q, %d, %v", tc.in, s, p, ok)
		}
	}
}
