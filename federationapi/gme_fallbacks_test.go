package federationapi

import (
	"context"
	"fmt"
	"io/fs"
	"slices"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestGMEFallbacksReadsEveryCandidate: the servers asked when a PDU's
// origin does not answer get_missing_events come from one read of
// federation_destinations (in chunks of storage.MaxInList servers): never a
// server in backoff, servers that never failed first in the room's
// order, then those whose backoff ran out, fewest failures first. The
// healthy servers here sit past the first chunk, behind more than
// storage.MaxInList servers in backoff.
func TestGMEFallbacksReadsEveryCandidate(t *testing.T) {
	t.Parallel()
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		sub, err := fs.Sub(migrationFiles, "migrations")
		if err != nil {
			t.Fatal(err)
		}
		if err := db.Migrate(ctx, "federationapi", sub); err != nil {
			t.Fatal(err)
		}
		now := time.UnixMilli(1_800_000_000_000)
		s := &Server{db: db, now: func() time.Time { return now }}
		var servers []string
		err = db.Write(ctx, func(tx storage.Tx) error {
			row := func(name string, failures int, retryAt time.Time) error {
				_, err := tx.Exec(ctx, `INSERT INTO federation_destinations (server_name, failures, retry_at_ts) VALUES ($1, $2, $3)`,
					name, failures, retryAt.UnixMilli())
				return err
			}
			for i := range storage.MaxInList + 5 {
				name := fmt.Sprintf("down%d.example", i)
				servers = append(servers, name)
				if err := row(name, 1+i%3, now.Add(time.Minute)); err != nil {
					return err
				}
			}
			for _, r := range []struct {
				name     string
				failures int
			}{{"rec3.example", 3}, {"rec1.example", 1}, {"ok.example", 0}, {"rec2.example", 2}} {
				servers = append(servers, r.name)
				if err := row(r.name, r.failures, now.Add(-time.Second)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		servers = append(servers, "new.example") // no row: never failed

		for _, tc := range []struct {
			name    string
			servers []string
			want    []string
		}{
			{"healthy first, then fewest failures", servers, []string{"ok.example", "new.example", "rec1.example"}},
			{"only recovering after the healthy one", slices.DeleteFunc(slices.Clone(servers),
				func(s string) bool { return s == "ok.example" }), []string{"new.example", "rec1.example", "rec2.example"}},
			{"in backoff only", servers[:storage.MaxInList+5], nil},
			{"none", nil, nil},
		} {
			got, err := s.gmeFallbacks(ctx, tc.servers)
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("%s: gmeFallbacks = %v, want %v", tc.name, got, tc.want)
			}
		}
	})
}
