package federationapi

import (
	"strconv"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
)

// TestKeyRingMemoryBound: a flood of requests from many made-up servers,
// each naming made-up key IDs, leaves the key ring holding only what it
// still needs: fetch outcomes of the last minRefetch (older ones are
// dropped), at most maxMissing missing keys (emptied of the stale ones
// once full), and no per-server fetch lock nobody holds.
// SECURITY-CASES: unauthenticated input must not grow memory unbounded.
func TestKeyRingMemoryBound(t *testing.T) {
	t.Parallel()
	now := time.UnixMilli(1_800_000_000_000)
	r := &keyRing{s: &Server{now: func() time.Time { return now }},
		lastFetch: map[string]fetchOutcome{}, fetching: map[string]*serverFetch{}, missing: map[string]time.Time{}}
	const servers = 3 * maxMissing
	for i := range servers {
		server := "s" + strconv.Itoa(i) + ".example"
		m := r.lockServer(server)
		r.noteFetch(server, fetchOutcome{started: now, ended: now})
		r.unlockServer(server, m)
		r.noteMissing(server, "ed25519:"+strconv.Itoa(i))
		now = now.Add(time.Millisecond)
	}
	if len(r.fetching) != 0 {
		t.Errorf("%d per-server fetch locks left with nobody holding them, want 0", len(r.fetching))
	}
	if len(r.missing) > maxMissing {
		t.Errorf("%d missing keys remembered, want at most %d", len(r.missing), maxMissing)
	}
	// Fetches over 3*maxMissing ms (30 s) : only those of about the last
	// minRefetch (twice that at most, between two sweeps) are kept.
	if most := 2 * int(minRefetch/time.Millisecond); len(r.lastFetch) > most {
		t.Errorf("%d fetch outcomes kept after fetches of %d servers over %v, want at most %d", len(r.lastFetch), servers, time.Duration(servers)*time.Millisecond, most)
	}
	if !r.knownMissing("s"+strconv.Itoa(servers-1)+".example", "ed25519:"+strconv.Itoa(servers-1)) {
		t.Error("the last missing key, noted a moment ago, is not remembered")
	}

	now = now.Add(minRefetch)
	r.noteFetch("late.example", fetchOutcome{started: now, ended: now})
	r.noteMissing("late.example", "ed25519:late")
	if len(r.lastFetch) != 1 {
		t.Errorf("%d fetch outcomes kept minRefetch after the flood, want 1 (the new one)", len(r.lastFetch))
	}
	if len(r.missing) > maxMissing || !r.knownMissing("late.example", "ed25519:late") {
		t.Errorf("minRefetch after the flood: %d missing keys remembered, the new one %v; want at most %d, with the new one",
			len(r.missing), r.knownMissing("late.example", "ed25519:late"), maxMissing)
	}
	// Filled again with keys of that moment: the stale ones make room.
	for i := range maxMissing - 10 {
		r.noteMissing("again.example", "ed25519:"+strconv.Itoa(i))
	}
	if len(r.missing) > maxMissing || !r.knownMissing("again.example", "ed25519:"+strconv.Itoa(maxMissing-11)) {
		t.Errorf("refilled minRefetch after the flood: %d missing keys, the last one remembered %v; want at most %d, with it",
			len(r.missing), r.knownMissing("again.example", "ed25519:"+strconv.Itoa(maxMissing-11)), maxMissing)
	}
	// A burst at one moment into an empty ring: the first sweep frees
	// nothing, and the cap holds.
	r = &keyRing{s: r.s, lastFetch: map[string]fetchOutcome{}, fetching: map[string]*serverFetch{}, missing: map[string]time.Time{}}
	for i := range 2 * maxMissing {
		r.noteMissing("burst.example", "ed25519:"+strconv.Itoa(i))
	}
	if len(r.missing) > maxMissing {
		t.Errorf("%d missing keys remembered after a burst of %d at one moment, want at most %d", len(r.missing), 2*maxMissing, maxMissing)
	}
}

// TestOldKeyValidBeforeExpiry: a key of old_verify_keys verifies what
// was signed before its expired_ts, not at or after it (the time it
// stopped being used), whatever the validity rule for current keys.
// Spec: server-server-api, "Publishing Keys" (old_verify_keys,
// expired_ts).
func TestOldKeyValidBeforeExpiry(t *testing.T) {
	t.Parallel()
	always := func(_, _ spec.Timestamp) bool { return true }
	old := cachedKey{expiredTS: 1_000}
	for at, want := range map[spec.Timestamp]bool{999: true, 1_000: false, 1_001: false} {
		if got := old.validAt(at, always, forEvents); got != want {
			t.Errorf("old key expired at 1000, signature at %d: valid %v, want %v", at, got, want)
		}
	}
	// Never for a request (server-server-api, "Publishing Keys":
	// old_verify_keys "are only valid for signing events").
	if old.validAt(999, always, forRequests) {
		t.Error("an old key is valid for a request signed before its expired_ts")
	}
}

// TestMissingKeyForgottenAfterMinRefetch: a key a fetch lacked is
// refused at once only for minRefetch; after that a request naming it
// may make the next fetch again (the server may have published it
// since). Spec: server-server-api, "Retrieving server keys".
func TestMissingKeyForgottenAfterMinRefetch(t *testing.T) {
	t.Parallel()
	now := time.UnixMilli(1_800_000_000_000)
	r := &keyRing{s: &Server{now: func() time.Time { return now }},
		lastFetch: map[string]fetchOutcome{}, fetching: map[string]*serverFetch{}, missing: map[string]time.Time{}}
	r.noteMissing("s.example", "ed25519:k")
	now = now.Add(minRefetch - time.Millisecond)
	if !r.knownMissing("s.example", "ed25519:k") {
		t.Error("a key noted missing is forgotten before minRefetch")
	}
	if r.knownMissing("s.example", "ed25519:other") || r.knownMissing("t.example", "ed25519:k") {
		t.Error("another key, or the same ID of another server, is taken as missing")
	}
	now = now.Add(time.Millisecond)
	if r.knownMissing("s.example", "ed25519:k") {
		t.Error("a key noted missing minRefetch ago is still refused at once")
	}
}
