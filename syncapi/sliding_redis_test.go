package syncapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"net/http"
	"os"
	"reflect"
	"sort"
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
