package clientapi

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// hangingFederation is a Federation whose LeaveRemote never hears from
// the other server: it waits for its context (at most 10 s) and records
// when that context was to end.
type hangingFederation struct {
	Federation // only the methods below are called
	deadlines  chan time.Time
}

func (f *hangingFederation) PendingRemoteRooms(ctx context.Context, userID string) ([]string, error) {
	return []string{"!dead:gone.example"}, nil
}

func (f *hangingFederation) LeaveRemote(ctx context.Context, roomID, userID string, via []string) error {
	deadline, _ := ctx.Deadline()
	f.deadlines <- deadline
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(10 * time.Second):
		return nil
	}
}

// roomsHeldNowhere is a Rooms in which the user has no membership and
// no room is known: every pending membership is a remote one.
type roomsHeldNowhere struct{ Rooms }

func (roomsHeldNowhere) RoomsForUser(ctx context.Context, userID, membership string) ([]string, error) {
	return nil, nil
}

func (roomsHeldNowhere) RoomVersion(ctx context.Context, roomID string) (string, error) {
	return "", mxerr.New(mxerr.NotFound, "unknown room %s", roomID)
}

func (roomsHeldNowhere) Membership(ctx context.Context, roomID, userID string) (string, error) {
	return "", nil
}

// TestDeactivationRemoteAnswerLimit: the runner gives each rejection of
// a deactivated account's remote invite through another server
// remoteAnswerTimeout (20 s; shortened here to 300 ms) and no more: with
// a server that never answers, the call's context ends at the limit, the
// pass returns soon after and the account is dequeued (its pending
// membership ended locally by LeaveRemote, or with the dequeue).
// Without the limit the pass waits on the server (here the fake's own
// 10 s bound).
func TestDeactivationRemoteAnswerLimit(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		defer func(d time.Duration) { remoteAnswerTimeout = d }(remoteAnswerTimeout)
		remoteAnswerTimeout = 300 * time.Millisecond
		ctx := context.Background()
		cfg := config.Defaults()
		cfg.Global.ServerName = "test.example"
		cfg.Global.DataDir = t.TempDir()
		cfg.Global.SigningKeyPath = filepath.Join(cfg.Global.DataDir, "signing.key")
		fed := &hangingFederation{deadlines: make(chan time.Time, 4)}
		s, err := New(ctx, Deps{Config: &cfg, DB: db, Federation: fed, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		s.rooms.rooms = roomsHeldNowhere{}
		if err := db.Write(ctx, func(tx storage.Tx) error {
			if _, err := tx.Exec(ctx, `INSERT INTO accounts (localpart, created_ts, deactivated) VALUES ('bob', 1, TRUE)`); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `INSERT INTO deactivation_leaves (localpart, queued_ts) VALUES ('bob', 1)`)
			return err
		}); err != nil {
			t.Fatal(err)
		}

		start := time.Now()
		if err := s.leaveDeactivatedRooms(ctx, "", true); err != nil {
			t.Fatalf("runner pass: %v", err)
		}
		took := time.Since(start)
		select {
		case deadline := <-fed.deadlines:
			if deadline.IsZero() || deadline.Sub(start) > time.Second {
				t.Errorf("LeaveRemote's context ends at %v after the pass began, want the 300 ms limit", deadline.Sub(start))
			}
		default:
			t.Fatal("LeaveRemote was not called")
		}
		if took > 3*time.Second {
			t.Errorf("the pass took %v with the server silent, want about the 300 ms limit", took)
		}
		queued, err := s.queuedDeactivations(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		if len(queued) != 0 {
			t.Errorf("still queued after the pass: %v", queued)
		}
	})
}
