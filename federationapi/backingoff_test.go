package federationapi

import (
	"context"
	"io/fs"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestDestinationBackingOff: the key server is told a server is in the
// sender's backoff only while its failures are recorded and retry_at_ts
// is ahead; a server this process's sender holds healthy is not read.
func TestDestinationBackingOff(t *testing.T) {
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
		err = db.Write(ctx, func(tx storage.Tx) error {
			for _, r := range []struct {
				name     string
				failures int
				retryAt  time.Time
			}{{"down.example", 2, now.Add(time.Minute)}, {"due.example", 3, now.Add(-time.Second)}, {"ok.example", 0, now.Add(time.Minute)}} {
				if _, err := tx.Exec(ctx, `INSERT INTO federation_destinations (server_name, failures, retry_at_ts) VALUES ($1, $2, $3)`,
					r.name, r.failures, r.retryAt.UnixMilli()); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]bool{"down.example": true, "due.example": false, "ok.example": false, "never.example": false}
		for server, w := range want {
			if got := s.DestinationBackingOff(ctx, server); got != w {
				t.Errorf("%s: backing off %v, want %v", server, got, w)
			}
		}
		// With a sender: only the servers in its view are read.
		s.sender = &sender{s: s, view: newBackoffView(false)}
		if s.DestinationBackingOff(ctx, "down.example") {
			t.Error("down.example: backing off although the view holds it healthy")
		}
		s.sender.view.add([]string{"down.example"})
		if !s.DestinationBackingOff(ctx, "down.example") {
			t.Error("down.example: not backing off although the view holds it")
		}
	})
}
