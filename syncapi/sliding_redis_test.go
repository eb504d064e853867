package syncapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/internal/mxerr"
)

// testRedisConns is a store on the test Redis (MYELIN_TEST_REDIS) under
// a prefix of its own, deleted when the test ends.
func testRedisConns(t *testing.T) *redisConns {
	t.Helper()
	url := os.Getenv("MYELIN_TEST_REDIS")
	if url == "" {
		t.Skip("set MYELIN_TEST_REDIS to a Redis URL to run the sliding sync Redis store tests")
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	c, err := newRedisConns(url, "myelin-test:"+hex.EncodeToString(b[:])+":")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		iter := c.client.Scan(ctx, 0, c.prefix+"*", 100).Iterator()
		for iter.Next(ctx) {
			c.client.Del(ctx, iter.Val())
		}
		c.client.Close()
	})
	return c
}

// storedSeqs lists the sequence numbers a connection's hash holds.
func storedSeqs(t *testing.T, c *redisConns, k connKey) []string {
	t.Helper()
	fields, err := c.client.HKeys(context.Background(), c.key(k)).Result()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range fields {
		if f != "seq" {
			out = append(out, f)
		}
	}
	sort.Strings(out)
	return out
}

func stateAt(room int64) *connState {
	return &connState{heads: syncToken{Room: room, AccountData: 3, Typing: 7}, threadSubs: 5, rooms: map[string]sentRoom{
		"!a:x": {pos: room, timelineLimit: 10, stateSig: `[["m.room.create",""]]`},
		"!b:x": {pos: room - 1, timelineLimit: 1, stateSig: `[["m.room.create",""]]`},
		"!c:x": {pos: 2, timelineLimit: 0, stateSig: ""},
	}}
}

func TestSlidingRedisStoreSequence(t *testing.T) {
	c := testRedisConns(t)
	ctx := context.Background()
	k := connKey{"@alice:x", "DEV", "main"}
	other := connKey{"@alice:x", "DEV", "other"}
	load := func(k connKey, seq int64, st *connState) *connState {
		t.Helper()
		got, err := c.load(ctx, k, seq, st.heads.String())
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	s1, s2, s3 := stateAt(10), stateAt(20), stateAt(30)
	seq1, err := c.save(ctx, k, -1, s1)
	if err != nil || seq1 != 1 {
		t.Fatalf("first save: seq %d, %v; want 1", seq1, err)
	}
	// Another connection of the device counts on its own.
	if seq, err := c.save(ctx, other, -1, s1); err != nil || seq != 1 {
		t.Fatalf("other connection's first save: seq %d, %v; want 1", seq, err)
	}
	if got := load(k, seq1, s1); !reflect.DeepEqual(got, s1) {
		t.Fatalf("state read back = %+v, want %+v", got, s1)
	}
	// Two requests from seq1 at once (two processes): each gets its own
	// seq and every state stays.
	seq2, err := c.save(ctx, k, seq1, s2)
	if err != nil {
		t.Fatal(err)
	}
	seq3, err := c.save(ctx, k, seq1, s3)
	if err != nil {
		t.Fatal(err)
	}
	if seq2 != 2 || seq3 != 3 {
		t.Fatalf("concurrent saves got seqs %d, %d; want 2, 3", seq2, seq3)
	}
	if got := storedSeqs(t, c, k); !reflect.DeepEqual(got, []string{"1", "2", "3"}) {
		t.Fatalf("stored seqs %v, want [1 2 3]", got)
	}
	if !reflect.DeepEqual(load(k, seq2, s2), s2) || !reflect.DeepEqual(load(k, seq3, s3), s3) {
		t.Fatal("a state of the concurrent requests reads back wrong")
	}
	// Continuing from seq3 drops what is older than seq3.
	seq4, err := c.save(ctx, k, seq3, s1)
	if err != nil || seq4 != 4 {
		t.Fatalf("save from 3: seq %d, %v; want 4", seq4, err)
	}
	if got := storedSeqs(t, c, k); !reflect.DeepEqual(got, []string{"3", "4"}) {
		t.Fatalf("stored seqs after continuing from 3: %v, want [3 4]", got)
	}
	if load(k, seq1, s1) != nil || load(k, seq2, s2) != nil {
		t.Fatal("a superseded state is still served")
	}
	// The same seq with other heads (a pos from before the connection
	// expired and started again) is unknown.
	if got, err := c.load(ctx, k, seq4, stateAt(99).heads.String()); err != nil || got != nil {
		t.Fatalf("load with other heads = %v, %v; want unknown", got, err)
	}
	// A new connection (no pos) drops every earlier state.
	seq5, err := c.save(ctx, k, -1, s2)
	if err != nil || seq5 != 5 {
		t.Fatalf("restart: seq %d, %v; want 5", seq5, err)
	}
	if got := storedSeqs(t, c, k); !reflect.DeepEqual(got, []string{"5"}) {
		t.Fatalf("stored seqs after a restart: %v, want [5]", got)
	}
	// Unknown connection and seq.
	if load(connKey{"@bob:x", "DEV", "main"}, 1, s1) != nil || load(k, 77, s1) != nil {
		t.Fatal("an unknown connection or seq gave a state")
	}
	// Many requests from one pos keep at most maxOtherStates others.
	for range maxOtherStates + 5 {
		if _, err := c.save(ctx, k, seq5, s3); err != nil {
			t.Fatal(err)
		}
	}
	if got := storedSeqs(t, c, k); len(got) != maxOtherStates+2 {
		t.Fatalf("after %d saves from one pos the hash holds %d states, want %d", maxOtherStates+5, len(got), maxOtherStates+2)
	}
	if load(k, seq5, s2) == nil {
		t.Fatal("the state the requests started from was dropped")
	}
}

func TestSlidingRedisStoreExpiry(t *testing.T) {
	c := testRedisConns(t)
	c.ttl = 300 * time.Millisecond
	ctx := context.Background()
	k := connKey{"@alice:x", "DEV", ""}
	st := stateAt(4)
	seq, err := c.save(ctx, k, -1, st)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(150 * time.Millisecond)
	// Use renews the expiry.
	seq2, err := c.save(ctx, k, seq, st)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if got, err := c.load(ctx, k, seq2, st.heads.String()); err != nil || got == nil {
		t.Fatalf("state used 200ms ago (ttl 300ms) = %v, %v; want it kept", got, err)
	}
	time.Sleep(400 * time.Millisecond)
	if got, err := c.load(ctx, k, seq2, st.heads.String()); err != nil || got != nil {
		t.Fatalf("state unused for longer than its ttl = %v, %v; want unknown", got, err)
	}
}

func TestSlidingRedisStoreKeys(t *testing.T) {
	c := &redisConns{prefix: "p:sliding:"}
	a := c.key(connKey{"@a:x", "D1", "c"})
	b := c.key(connKey{"@a:x", "D", "1c"})
	if a == b {
		t.Fatalf("two connections share the key %q", a)
	}
}

// TestSlidingRedisUnavailable: without an answer from Redis a request
// fails with 503 (retried by clients with the same pos), neither with a
// response nor with M_UNKNOWN_POS.
func TestSlidingRedisUnavailable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	c, err := newRedisConns("redis://"+addr+"/0", "x:")
	if err != nil {
		t.Fatal(err)
	}
	defer c.client.Close()
	ctx := context.Background()
	check := func(what string, err error) {
		t.Helper()
		var me *mxerr.Error
		if !errors.As(err, &me) || me.Status() != http.StatusServiceUnavailable || me.Code != mxerr.Unknown {
			t.Fatalf("%s with Redis down: %v, want a 503 M_UNKNOWN", what, err)
		}
	}
	st, err := c.load(ctx, connKey{"@a:x", "D", ""}, 1, "s1_2")
	if st != nil {
		t.Fatal("load with Redis down gave a state")
	}
	check("load", err)
	_, err = c.save(ctx, connKey{"@a:x", "D", ""}, -1, stateAt(3))
	check("save", err)
}

// deviceHashes counts the connection hashes of the device of k in Redis.
func deviceHashes(t *testing.T, c *redisConns, k connKey, conns []string) int {
	t.Helper()
	n := 0
	for _, id := range conns {
		exists, err := c.client.Exists(context.Background(), c.key(connKey{k.user, k.device, id})).Result()
		if err != nil {
			t.Fatal(err)
		}
		n += int(exists)
	}
	return n
}

// TestSlidingRedisConnsPerDevice: two processes (two clients on one
// prefix) creating many connections of one device at once leave at most
// maxConnsPerDevice of them, in the device's set and as hashes; a pos of
// a dropped connection is unknown, and continuing from it stores
// nothing; another device's connections stay.
func TestSlidingRedisConnsPerDevice(t *testing.T) {
	a := testRedisConns(t)
	b, err := newRedisConns(os.Getenv("MYELIN_TEST_REDIS"), strings.TrimSuffix(a.prefix, "sliding:"))
	if err != nil {
		t.Fatal(err)
	}
	defer b.client.Close()
	ctx := context.Background()
	dev := connKey{"@alice:x", "DEV", ""}
	other := connKey{"@alice:x", "OTHER", "main"}
	st := stateAt(10)
	otherSeq, err := a.save(ctx, other, -1, st)
	if err != nil {
		t.Fatal(err)
	}
	const n = 4 * maxConnsPerDevice
	ids := make([]string, n)
	seqs := make([]int64, n)
	errs := make(chan error, n)
	for i := range n {
		ids[i] = fmt.Sprintf("conn%d", i)
		go func() {
			c := a
			if i%2 == 1 {
				c = b
			}
			var err error
			seqs[i], err = c.save(ctx, connKey{dev.user, dev.device, ids[i]}, -1, st)
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if got := deviceHashes(t, a, dev, ids); got != maxConnsPerDevice {
		t.Fatalf("%d connections created at once left %d hashes, want %d", n, got, maxConnsPerDevice)
	}
	if card := a.client.ZCard(ctx, a.deviceKey(dev)).Val(); card != maxConnsPerDevice {
		t.Fatalf("the device's set holds %d connections, want %d", card, maxConnsPerDevice)
	}
	kept, dropped := 0, -1
	for i, id := range ids {
		k := connKey{dev.user, dev.device, id}
		got, err := a.load(ctx, k, seqs[i], st.heads.String())
		if err != nil {
			t.Fatal(err)
		}
		if got != nil {
			kept++
		} else if dropped < 0 {
			dropped = i
		}
	}
	if kept != maxConnsPerDevice || dropped < 0 {
		t.Fatalf("%d connections still load, want %d", kept, maxConnsPerDevice)
	}
	// A request that started from a dropped connection's state before
	// it was dropped stores nothing and gets M_UNKNOWN_POS.
	k := connKey{dev.user, dev.device, ids[dropped]}
	_, err = b.save(ctx, k, seqs[dropped], st)
	var me *mxerr.Error
	if !errors.As(err, &me) || me.Code != unknownPos || me.Status() != http.StatusBadRequest {
		t.Fatalf("save from a dropped connection: %v, want 400 M_UNKNOWN_POS", err)
	}
	if got := deviceHashes(t, a, dev, ids); got != maxConnsPerDevice {
		t.Fatalf("after a save from a dropped connection the device has %d hashes, want %d", got, maxConnsPerDevice)
	}
	if got, err := a.load(ctx, other, otherSeq, st.heads.String()); err != nil || got == nil {
		t.Fatalf("another device's connection = %v, %v; want it kept", got, err)
	}
}

// TestSlidingRedisConnsLeastRecentlyUsed: the connection dropped is the
// device's least recently saved one, and connections whose hashes
// expired leave the device's set instead of counting against the bound.
func TestSlidingRedisConnsLeastRecentlyUsed(t *testing.T) {
	c := testRedisConns(t)
	ctx := context.Background()
	st := stateAt(10)
	conn := func(i int) connKey { return connKey{"@alice:x", "DEV", fmt.Sprintf("c%d", i)} }
	seqs := map[int]int64{}
	save := func(i int, from int64) {
		t.Helper()
		seq, err := c.save(ctx, conn(i), from, st)
		if err != nil {
			t.Fatalf("save c%d: %v", i, err)
		}
		seqs[i] = seq
		time.Sleep(2 * time.Millisecond) // distinct Redis times
	}
	for i := range maxConnsPerDevice {
		save(i, -1)
	}
	save(0, seqs[0]) // c0 used again: c1 is the least recently used
	save(maxConnsPerDevice, -1)
	for i := range maxConnsPerDevice + 1 {
		got, err := c.load(ctx, conn(i), seqs[i], st.heads.String())
		if err != nil {
			t.Fatal(err)
		}
		if (got == nil) != (i == 1) {
			t.Fatalf("c%d loads %v after c%d was created; want only c1 dropped", i, got != nil, maxConnsPerDevice)
		}
	}
	// Expired connections leave the device's set (which itself lives
	// as long as its latest connection) instead of counting against the
	// bound.
	c.ttl = 300 * time.Millisecond
	exp := func(i int) connKey { return connKey{"@alice:x", "EXP", fmt.Sprintf("c%d", i)} }
	for i := range 2 {
		if _, err := c.save(ctx, exp(i), -1, st); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	if _, err := c.save(ctx, exp(2), -1, st); err != nil {
		t.Fatal(err)
	}
	time.Sleep(150 * time.Millisecond) // c0 and c1 expired, c2 not
	if _, err := c.save(ctx, exp(3), -1, st); err != nil {
		t.Fatal(err)
	}
	if got := c.client.ZRange(ctx, c.deviceKey(exp(0)), 0, -1).Val(); !reflect.DeepEqual(got, []string{c.key(exp(2)), c.key(exp(3))}) {
		t.Fatalf("after two connections expired the device's set holds %v, want c2 and c3", got)
	}
}
