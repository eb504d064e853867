package pushserver_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
)

const testPassword = "correct horse battery staple"

// pushConfig lets the tests' gateways on 127.0.0.1 through and retries
// quickly.
func pushConfig(c *config.Config) {
	c.Push.OutboundIPAllow = []string{"127.0.0.1"}
	c.Push.MinBackoff = config.Duration(50 * time.Millisecond)
	c.Push.MaxBackoff = config.Duration(200 * time.Millisecond)
}

// user is a registered account and its mautrix client.
type user struct {
	id  string
	cli *mautrix.Client
	srv *testserver.Server
}

func register(t *testing.T, srv *testserver.Server, name string) *user {
	t.Helper()
	cli, err := mautrix.NewClient(srv.URL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cli.RegisterDummy(context.Background(), &mautrix.ReqRegister[any]{Username: name, Password: testPassword})
	if err != nil {
		t.Fatalf("registering %s: %v", name, err)
	}
	cli.SetCredentials(resp.UserID, resp.AccessToken)
	cli.DeviceID = resp.DeviceID
	return &user{id: string(resp.UserID), cli: cli, srv: srv}
}

// login opens a second session (device) for u.
func (u *user) login(t *testing.T) *user {
	t.Helper()
	cli, err := mautrix.NewClient(u.srv.URL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = cli.Login(context.Background(), &mautrix.ReqLogin{Type: mautrix.AuthTypePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: u.id}, Password: testPassword, StoreCredentials: true})
	if err != nil {
		t.Fatalf("logging in %s: %v", u.id, err)
	}
	return &user{id: u.id, cli: cli, srv: u.srv}
}

// call makes a request as u and returns the status and body.
func (u *user) call(t *testing.T, method, path string, body any) (int, gjson.Result) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		if s, ok := body.(string); ok {
			rd = bytes.NewReader([]byte(s))
		} else {
			data, err := json.Marshal(body)
			if err != nil {
				t.Fatal(err)
			}
			rd = bytes.NewReader(data)
		}
	}
	req, err := http.NewRequest(method, u.srv.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+u.cli.AccessToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, gjson.ParseBytes(data)
}

// must is call that fails the test unless the status is 200.
func (u *user) must(t *testing.T, method, path string, body any) gjson.Result {
	t.Helper()
	status, res := u.call(t, method, path, body)
	if status != http.StatusOK {
		t.Fatalf("%s %s: %d %s", method, path, status, res.Raw)
	}
	return res
}

// room creates a room by u that the others join.
func room(t *testing.T, u *user, others ...*user) string {
	t.Helper()
	ctx := context.Background()
	var invite []id.UserID
	for _, o := range others {
		invite = append(invite, id.UserID(o.id))
	}
	resp, err := u.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: invite})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range others {
		if _, err := o.cli.JoinRoomByID(ctx, resp.RoomID); err != nil {
			t.Fatal(err)
		}
	}
	return string(resp.RoomID)
}

// send sends a message event and returns its ID.
func (u *user) send(t *testing.T, roomID, eventType string, content any) string {
	t.Helper()
	resp, err := u.cli.SendMessageEvent(context.Background(), id.RoomID(roomID), event.NewEventType(eventType), content)
	if err != nil {
		t.Fatalf("sending %s: %v", eventType, err)
	}
	return string(resp.EventID)
}

func (u *user) text(t *testing.T, roomID, body string) string {
	return u.send(t, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": body})
}

// sync runs an initial /sync with filter (JSON, or "") and returns the
// joined room's entry.
func (u *user) syncRoom(t *testing.T, roomID, filter string) gjson.Result {
	t.Helper()
	path := "/_matrix/client/v3/sync"
	if filter != "" {
		path += "?filter=" + url.QueryEscape(filter)
	}
	res := u.must(t, http.MethodGet, path, nil)
	r := res.Get("rooms.join." + gjson.Escape(roomID))
	if !r.Exists() {
		t.Fatalf("room %s not in sync: %s", roomID, res.Raw)
	}
	return r
}

// counts returns the room's unread_notifications from an initial sync.
func (u *user) counts(t *testing.T, roomID string) (notifications, highlights int64) {
	t.Helper()
	r := u.syncRoom(t, roomID, "")
	return r.Get("unread_notifications.notification_count").Int(), r.Get("unread_notifications.highlight_count").Int()
}

func (u *user) wantCounts(t *testing.T, roomID string, notifications, highlights int64) {
	t.Helper()
	n, h := u.counts(t, roomID)
	if n != notifications || h != highlights {
		t.Fatalf("%s in %s: notification_count %d, highlight_count %d; want %d, %d", u.id, roomID, n, h, notifications, highlights)
	}
}

func esc(s string) string { return url.PathEscape(s) }
