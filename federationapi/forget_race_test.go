package federationapi

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/internal/signing"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// forgetRaceRounds is how many times TestForgetRacesRemoteInviteAcrossProcesses
// races the two writes.
const forgetRaceRounds = 400

// TestForgetRacesRemoteInviteAcrossProcesses: two server processes share
// one PostgreSQL database, as in split mode: each has its own connections
// and its own roomserver (so neither sees the other's in-process room
// locks). bob has rejected an invite to a room only other servers hold
// (his pending membership is a leave) and has not forgotten it. Process
// 1 runs bob's /forget of the room while process 2 stores a new invite
// of bob's to it (storePendingMembership, which clears the forgotten
// mark through UnforgetInTx), started together, forgetRaceRounds times,
// each in a room of its own. Whichever commits first, the end state is
// one of the two orders:
//   - the forget first: the room is forgotten, then the invite clears
//     the mark (and the forget's end of the old leave does not touch
//     the new invite);
//   - the invite first: the forget reads the pending invite and is
//     refused with 400 M_UNKNOWN.
//
// So bob never ends with a pending invite and a forgotten room (the
// invite would then be hidden from include_leave syncs once it ends),
// an invite stored (acknowledged to the inviting server) is never lost,
// and neither write fails for any other reason (no deadlock).
// The order comes from the forget lock (roomserver lockForget, a
// PostgreSQL advisory lock on the room): the room has no
// roomserver_rooms row that Forget's FOR UPDATE could lock, and the
// processes share no memory. SQLite has one writer at a time and needs
// no such test.
// Spec: client-server-api, "Leaving rooms" (forgotten "until the user
// re-joins, is re-invited, or knocks"), "POST
// /_matrix/client/v3/rooms/{roomId}/forget" (400 while not left).
func TestForgetRacesRemoteInviteAcrossProcesses(t *testing.T) {
	t.Parallel()
	if os.Getenv(storagetest.PostgresEnv) == "" {
		t.Skipf("PostgreSQL only (the forget lock orders processes sharing PostgreSQL): set %s to run it", storagetest.PostgresEnv)
	}
	ctx := context.Background()
	opts := storagetest.PostgresOptions(t)
	open := func() *storage.DB {
		t.Helper()
		db, err := storage.Open(ctx, opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return db
	}
	sub, err := fs.Sub(migrationFiles, "migrations")
	if err != nil {
		t.Fatal(err)
	}
	const server = "test.local"
	type process struct {
		fed   *Server
		rooms *roomserver.Server
	}
	start := func(db *storage.DB) process {
		t.Helper()
		key, err := signing.Generate()
		if err != nil {
			t.Fatal(err)
		}
		if err := db.Migrate(ctx, "federationapi", sub); err != nil {
			t.Fatal(err)
		}
		fed := &Server{db: db, serverName: server, now: time.Now}
		rooms, err := roomserver.New(ctx, roomserver.Deps{DB: db, ServerName: server, Key: key,
			Config: config.RoomServer{DefaultRoomVersion: "12"}, Notify: func(string, int64) {},
			PendingMembership: PendingMembershipInTx, EndPendingMembership: fed.EndPendingMembershipInTx})
		if err != nil {
			t.Fatal(err)
		}
		fed.rooms = rooms
		return process{fed, rooms}
	}
	one, two := start(open()), start(open())

	const bob = "@bob:" + server
	// outcomes counts the rounds by how they ended; all but the first
	// two are failures, counted (not stopped at) so that a run shows how
	// often each happens.
	var outcomes struct {
		forgetFirst, inviteFirst, bothInviteAndForgotten, inviteLost, failedWrite int
		first                                                                     string
	}
	fail := func(n *int, format string, args ...any) {
		*n++
		if outcomes.first == "" {
			outcomes.first = fmt.Sprintf(format, args...)
		}
	}
	for i := range forgetRaceRounds {
		roomID := fmt.Sprintf("!race%d:remote.example", i)
		stored := func(p process, membership string) error {
			return p.fed.storePendingMembership(ctx, pendingMembership{userID: bob, roomID: roomID, eventID: fmt.Sprintf("$%s%d", membership, i),
				roomVersion: "10", event: []byte(`{}`), strippedState: []byte(`[]`), membership: membership})
		}
		if err := stored(two, "leave"); err != nil {
			t.Fatal(err)
		}
		var forgetErr, inviteErr error
		var wg sync.WaitGroup
		race := make(chan struct{})
		wg.Add(2)
		go func() {
			defer wg.Done()
			<-race
			forgetErr = one.rooms.Forget(ctx, bob, roomID)
		}()
		go func() {
			defer wg.Done()
			<-race
			inviteErr = stored(two, "invite")
		}()
		close(race)
		wg.Wait()

		if inviteErr != nil || (forgetErr != nil && !mxerr.Is(forgetErr, mxerr.Unknown)) {
			fail(&outcomes.failedWrite, "round %d: invite: %v; forget: %v (want success or 400 M_UNKNOWN)", i, inviteErr, forgetErr)
			continue
		}
		var pending string
		err := one.fed.db.Write(ctx, func(tx storage.Tx) error {
			var err error
			pending, err = PendingMembershipInTx(ctx, tx, bob, roomID)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		forgottenRooms, err := one.rooms.ForgottenRooms(ctx, bob)
		if err != nil {
			t.Fatal(err)
		}
		isForgotten := forgottenRooms[roomID]
		switch {
		case pending == "invite" && isForgotten:
			fail(&outcomes.bothInviteAndForgotten, "round %d: bob ends with a pending invite and the room forgotten (forget: %v)", i, forgetErr)
		case pending != "invite":
			fail(&outcomes.inviteLost, "round %d: the stored invite is lost: pending membership %q, forgotten %v (forget: %v)", i, pending, isForgotten, forgetErr)
		case forgetErr == nil:
			outcomes.forgetFirst++
		default:
			outcomes.inviteFirst++
		}
	}
	t.Logf("%d rounds: forget first %d, invite first %d; pending invite and forgotten %d, invite lost %d, a write failed %d",
		forgetRaceRounds, outcomes.forgetFirst, outcomes.inviteFirst, outcomes.bothInviteAndForgotten, outcomes.inviteLost, outcomes.failedWrite)
	if outcomes.first != "" {
		t.Fatalf("%d of %d rounds broke the order; the first: %s", forgetRaceRounds-outcomes.forgetFirst-outcomes.inviteFirst,
			forgetRaceRounds, outcomes.first)
	}
}
