package federationapi

import (
	"context"
	"io/fs"
	"strconv"
	"testing"
	"testing/fstest"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
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

// TestServerKeysDocumentValidityMigration: migration 010 gives the keys
// cached before it the document validity their rows imply — a current
// key its own valid_until_ts, an old key that of its server's newest
// stored document (0 with none) — capped seven days past fetched_ts, and
// each stored document its own valid_until_ts capped seven days past the
// latest fetched_ts of its server's keys, so an older document cannot
// replace them and a later one can.
func TestServerKeysDocumentValidityMigration(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		all, err := fs.Sub(migrationFiles, "migrations")
		if err != nil {
			t.Fatal(err)
		}
		names, err := fs.Glob(all, "*.sql")
		if err != nil {
			t.Fatal(err)
		}
		before := fstest.MapFS{}
		for _, name := range names {
			if name < "010" {
				data, err := fs.ReadFile(all, name)
				if err != nil {
					t.Fatal(err)
				}
				before[name] = &fstest.MapFile{Data: data}
			}
		}
		if err := db.Migrate(ctx, "federationapi", before); err != nil {
			t.Fatal(err)
		}
		const day = int64(24 * time.Hour / time.Millisecond)
		const fetched = 1_800_000_000_000
		rows := []struct {
			server, keyID       string
			validUntil, expired int64
			want                int64
		}{
			{"a.example", "ed25519:cur", fetched + day, 0, fetched + day},
			{"a.example", "ed25519:old", 0, fetched - day, fetched + 2*day}, // a.example's document
			{"b.example", "ed25519:far", fetched + 365*day, 0, fetched + 7*day},
			{"c.example", "ed25519:old", 0, fetched - day, 0}, // no document stored
		}
		docs := map[string]int64{"a.example": fetched + 2*day, "b.example": fetched + 365*day, "d.example": fetched + 365*day}
		wantDocs := map[string]int64{"a.example": fetched + 2*day, "b.example": fetched + 7*day, "d.example": fetched + 365*day} // d: no key row
		if err := db.Write(ctx, func(tx storage.Tx) error {
			for _, r := range rows {
				if _, err := tx.Exec(ctx, `INSERT INTO federation_server_keys (server_name, key_id, public_key, valid_until_ts, expired_ts, fetched_ts)
					VALUES ($1, $2, 'AAAA', $3, $4, $5)`, r.server, r.keyID, r.validUntil, r.expired, int64(fetched)); err != nil {
					return err
				}
			}
			for server, validUntil := range docs {
				if _, err := tx.Exec(ctx, `INSERT INTO federation_key_documents (server_name, document, valid_until_ts) VALUES ($1, '{}', $2)`,
					server, validUntil); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		sub, err := fs.Sub(migrationFiles, "migrations")
		if err != nil {
			t.Fatal(err)
		}
		if err := db.Migrate(ctx, "federationapi", sub); err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			var got int64
			if err := db.Reader().QueryRow(ctx, `SELECT document_valid_until_ts FROM federation_server_keys WHERE server_name = $1 AND key_id = $2`,
				r.server, r.keyID).Scan(&got); err != nil || got != r.want {
				t.Errorf("%s %s after migration 010: document_valid_until_ts %d (%v), want %d", r.server, r.keyID, got, err, r.want)
			}
		}
		for server, want := range wantDocs {
			var got int64
			if err := db.Reader().QueryRow(ctx, `SELECT document_valid_until_ts FROM federation_key_documents WHERE server_name = $1`,
				server).Scan(&got); err != nil || got != want {
				t.Errorf("the key document of %s after migration 010: document_valid_until_ts %d (%v), want %d", server, got, err, want)
			}
		}
	})
}
