package syncapi_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
)

// user is a test account with a mautrix client.
type user struct {
	id     string
	token  string
	client *mautrix.Client
}

// newUser inserts an account, a device and a session directly (account
// registration lives in another component) and returns a client for it.
func newUser(t testing.TB, srv *testserver.Server, localpart string) *user {
	t.Helper()
	ctx := context.Background()
	var raw [32]byte
	_, _ = rand.Read(raw[:])
	token := "mya_" + base64.RawURLEncoding.EncodeToString(raw[:])
	hash := sha256.Sum256([]byte(token))
	now := time.Now().UnixMilli()
	err := srv.HS.DB.Write(ctx, func(tx storage.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO accounts (localpart, created_ts, is_guest) VALUES ($1, $2, $3)`,
			localpart, now, false); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO devices (localpart, device_id, created_ts) VALUES ($1, $2, $3)`,
			localpart, "DEV"+strings.ToUpper(localpart), now); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO sessions (localpart, device_id, access_token_hash, created_ts) VALUES ($1, $2, $3, $4)`,
			localpart, "DEV"+strings.ToUpper(localpart), hash[:], now)
		return err
	})
	if err != nil {
		t.Fatalf("inserting user %s: %v", localpart, err)
	}
	userID := "@" + localpart + ":" + srv.Config.Global.ServerName
	cli, err := mautrix.NewClient(srv.URL, id.UserID(userID), token)
	if err != nil {
		t.Fatal(err)
	}
	cli.DeviceID = id.DeviceID("DEV" + strings.ToUpper(localpart))
	return &user{id: userID, token: token, client: cli}
}

func createRoom(t testing.TB, srv *testserver.Server, creator *user, req roomserver.CreateRoomRequest) string {
	t.Helper()
	req.Creator = creator.id
	resp, err := srv.HS.Rooms.CreateRoom(context.Background(), req)
	if err != nil {
		t.Fatalf("creating room: %v", err)
	}
	return resp.RoomID
}

func sendText(t testing.TB, srv *testserver.Server, sender *user, roomID, body string) string {
	t.Helper()
	content, _ := json.Marshal(map[string]string{"msgtype": "m.text", "body": body})
	resp, err := srv.HS.Rooms.SendEvent(context.Background(), roomserver.SendEventRequest{
		RoomID: roomID, Sender: sender.id, Type: "m.room.message", Content: content})
	if err != nil {
		t.Fatalf("sending: %v", err)
	}
	return resp.EventID
}

func sendState(t testing.TB, srv *testserver.Server, sender *user, roomID, eventType, stateKey, contentJSON string) string {
	t.Helper()
	resp, err := srv.HS.Rooms.SendEvent(context.Background(), roomserver.SendEventRequest{
		RoomID: roomID, Sender: sender.id, Type: eventType, StateKey: &stateKey, Content: json.RawMessage(contentJSON)})
	if err != nil {
		t.Fatalf("sending state: %v", err)
	}
	return resp.EventID
}

func membership(t testing.TB, srv *testserver.Server, op string, sender *user, target, roomID string) {
	t.Helper()
	rs := srv.HS.Rooms
	req := roomserver.MembershipRequest{RoomID: roomID, Sender: sender.id, Target: target}
	var err error
	switch op {
	case "join":
		_, err = rs.Join(context.Background(), req)
	case "leave":
		_, err = rs.Leave(context.Background(), req)
	case "invite":
		_, err = rs.Invite(context.Background(), req)
	case "kick":
		_, err = rs.Kick(context.Background(), req)
	case "ban":
		_, err = rs.Ban(context.Background(), req)
	case "knock":
		_, err = rs.Knock(context.Background(), req)
	default:
		t.Fatalf("unknown op %s", op)
	}
	if err != nil {
		t.Fatalf("%s %s in %s: %v", op, target, roomID, err)
	}
}

// rawSync calls GET /sync with the query string given and returns the
// status and decoded body.
func rawSync(t testing.TB, srv *testserver.Server, u *user, query string) (int, map[string]any) {
	t.Helper()
	return rawRequest(t, srv, u, http.MethodGet, "/_matrix/client/v3/sync?"+query, "")
}

func rawRequest(t testing.TB, srv *testserver.Server, u *user, method, path, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+u.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(data, &out); err != nil {
		t.Fatalf("%s %s: status %d, body %q is not JSON", method, path, resp.StatusCode, data)
	}
	return resp.StatusCode, out
}

func mustFilter(s string) *mautrix.Filter {
	var f mautrix.Filter
	if err := json.Unmarshal([]byte(s), &f); err != nil {
		panic(err)
	}
	return &f
}

func postgresAvailable() bool { return os.Getenv("MYELIN_TEST_POSTGRES") != "" }

// startStoppable starts a server that the test may stop before it ends,
// to start another on the same data. The server runs inside a subtest
// whose cleanup stops it; stop ends that subtest and waits for it.
func startStoppable(t *testing.T, engine storage.Engine, edit func(*config.Config)) (*testserver.Server, func()) {
	t.Helper()
	var srv *testserver.Server
	done, started, finished := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		t.Run("server", func(st *testing.T) {
			srv = testserver.Start(st, engine, edit)
			close(started)
			<-done
		})
	}()
	select {
	case <-started:
	case <-finished:
		t.FailNow()
	}
	return srv, func() { close(done); <-finished }
}
