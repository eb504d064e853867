package federationapi_test

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/storage"
	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// rawSync runs GET /sync for u with since (initial when "") and filter
// (none when "") and returns the raw answer.
func rawSync(t *testing.T, s *fedServer, u *syncer, since, filter string) []byte {
	t.Helper()
	q := url.Values{"timeout": {"0"}}
	if since != "" {
		q.Set("since", since)
	}
	if filter != "" {
		q.Set("filter", filter)
	}
	req, err := http.NewRequest(http.MethodGet, "https://"+s.Name+"/_matrix/client/v3/sync?"+q.Encode(), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+u.cli.AccessToken)
	resp, err := u.cli.Client.Do(req)
	if err != nil {
		t.Fatalf("sync: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("sync: %d %s", resp.StatusCode, body)
	}
	return body
}

// syncPath escapes a room ID for a gjson path.
func syncPath(section string, roomID id.RoomID) string {
	r := strings.NewReplacer(".", `\.`, ":", `\:`, "*", `\*`, "?", `\?`)
	return "rooms." + section + "." + r.Replace(string(roomID))
}

// TestRejectWhenInviterUnreachable: bob on B is invited to a room only A
// holds and knocks on another; then A goes away. Rejecting the invite and
// withdrawing the knock answer 200 {} all the same: B ends both with a
// leave of its own. An incremental /sync shows both rooms in rooms.leave
// once, each with bob's leave (unsigned naming the invite or knock it
// replaced, and bob's membership at it); the next incremental sync does
// not repeat them; an initial sync shows them only with include_leave,
// and neither in rooms.invite or rooms.knock. /forget then works. A
// never saw the leave: once back, it still has bob invited, and its
// next invite reaches bob and shows in rooms.invite.
//
// Before, both /leave calls failed with 502 and the invite and knock
// stayed in /sync for good.
// Spec: client-server-api, "Leaving rooms", "POST
// /_matrix/client/v3/rooms/{roomId}/leave", "POST .../forget".
func TestRejectWhenInviterUnreachable(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		a, b := n.start(), n.start()
		alice, bob := a.register("alice"), b.register("bob")
		created, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.id()}})
		if err != nil {
			t.Fatal(err)
		}
		invited := created.RoomID
		knocked := knockRoom(t, alice, "knock knock")
		bob.syncOnce()
		if _, err := bob.cli.KnockRoom(ctx, knocked.String(), &mautrix.ReqKnockRoom{Via: []string{a.Name}}); err != nil {
			t.Fatalf("bob knocking: %v", err)
		}
		bob.await("the invite and the knock", func() bool { return bob.invites[invited] && len(bob.knocks[knocked]) > 0 })
		before := bob.since

		a.stop()
		for _, roomID := range []id.RoomID{invited, knocked} {
			if _, err := bob.cli.LeaveRoom(ctx, roomID); err != nil {
				t.Fatalf("leaving %s with A gone: %v", roomID, err)
			}
		}
		if m := pendingMembership(t, b, bob, invited); m != "leave" {
			t.Fatalf("the invite's pending membership is %q after the rejection, want leave", m)
		}

		incremental := rawSync(t, b, bob, before, "")
		for roomID, prev := range map[id.RoomID]string{invited: "invite", knocked: "knock"} {
			left := gjson.GetBytes(incremental, syncPath("leave", roomID))
			if !left.Exists() {
				t.Fatalf("incremental sync: %s not in rooms.leave: %s", roomID, incremental)
			}
			var found bool
			for _, e := range left.Get("timeline.events").Array() {
				if e.Get("type").Str == "m.room.member" && e.Get("state_key").Str == string(bob.id()) &&
					e.Get("sender").Str == string(bob.id()) && e.Get("content.membership").Str == "leave" {
					found = true
					if e.Get("unsigned.membership").Str != "leave" || e.Get("unsigned.prev_content.membership").Str != prev ||
						!strings.HasPrefix(e.Get("unsigned.replaces_state").Str, "$") {
						t.Errorf("%s: leave's unsigned is %s, want membership leave, prev_content of the %s, replaces_state", roomID, e.Get("unsigned").Raw, prev)
					}
				}
			}
			if !found {
				t.Errorf("incremental sync: %s in rooms.leave without bob's leave: %s", roomID, left.Raw)
			}
			if gjson.GetBytes(incremental, syncPath("invite", roomID)).Exists() || gjson.GetBytes(incremental, syncPath("knock", roomID)).Exists() {
				t.Errorf("incremental sync: %s still invited or knocking", roomID)
			}
		}
		next := gjson.GetBytes(incremental, "next_batch").Str
		again := rawSync(t, b, bob, next, "")
		initial := rawSync(t, b, bob, "", "")
		withLeave := rawSync(t, b, bob, "", includeLeave)
		for _, roomID := range []id.RoomID{invited, knocked} {
			if gjson.GetBytes(again, syncPath("leave", roomID)).Exists() {
				t.Errorf("the sync after shows %s in rooms.leave again", roomID)
			}
			for _, section := range []string{"invite", "knock", "leave"} {
				if gjson.GetBytes(initial, syncPath(section, roomID)).Exists() {
					t.Errorf("initial sync without include_leave: %s in rooms.%s", roomID, section)
				}
			}
			if !gjson.GetBytes(withLeave, syncPath("leave", roomID)).Exists() {
				t.Errorf("initial sync with include_leave: %s not in rooms.leave", roomID)
			}
		}

		for _, roomID := range []id.RoomID{invited, knocked} {
			if _, err := bob.cli.ForgetRoom(ctx, roomID); err != nil {
				t.Fatalf("forgetting %s: %v", roomID, err)
			}
			if gjson.GetBytes(rawSync(t, b, bob, "", includeLeave), syncPath("leave", roomID)).Exists() {
				t.Errorf("%s still in rooms.leave after /forget", roomID)
			}
		}

		// A is back and never heard of the leave; its next invite
		// reaches bob.
		a.restart()
		if m, err := a.HS.Rooms.Membership(ctx, string(invited), string(bob.id())); err != nil || m != "invite" {
			t.Fatalf("bob's membership on A: %q, %v; want invite (the local leave is sent to no one)", m, err)
		}
		if _, err := alice.cli.KickUser(ctx, invited, &mautrix.ReqKickUser{UserID: bob.id()}); err != nil {
			t.Fatalf("withdrawing the old invite: %v", err)
		}
		delete(bob.invites, invited)
		if _, err := alice.cli.InviteUser(ctx, invited, &mautrix.ReqInviteUser{UserID: bob.id()}); err != nil {
			t.Fatalf("inviting bob again: %v", err)
		}
		bob.await("the new invite", func() bool { return bob.invites[invited] })
		if m := pendingMembership(t, b, bob, invited); m != "invite" {
			t.Fatalf("pending membership after the new invite: %q", m)
		}
	})
}

// TestLocalLeaveOnlyForTheOtherSidesFailures drives LeaveRemote against
// one server per kind of failure, with bob's pending invite from it:
// every refusal (403, 404, 400, 401, 429), a 5xx, a server that does not
// answer before the caller's deadline, a tampered make_leave template
// (aborted: nothing of it signed or sent) and a name that does not
// resolve all end the invite with a local leave and succeed; a cancelled call
// and a room with no pending invite return their error and write
// nothing.
func TestLocalLeaveOnlyForTheOtherSidesFailures(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		b := n.start()
		bob := b.user("bob")
		const tampered = -1 // a make_leave template with another sender (security case 14)
		var sendLeaves atomic.Int32
		hang := make(chan struct{})
		t.Cleanup(func() { close(hang) })
		answering := func(status int) string {
			name, _ := n.fakeServer(t, func(name string, mux *http.ServeMux) {
				mux.HandleFunc("/_matrix/federation/v1/make_leave/", func(w http.ResponseWriter, r *http.Request) {
					if status == tampered {
						parts := strings.Split(r.URL.EscapedPath(), "/")
						roomID, _ := unescape(parts[5])
						userID, _ := unescape(parts[6])
						_, _ = w.Write(mustJSON(map[string]any{"room_version": "10", "event": map[string]any{
							"type": "m.room.member", "sender": "@mallory:evil.example", "state_key": userID, "room_id": roomID,
							"content": map[string]string{"membership": "leave"}, "prev_events": []string{"$prev"},
							"auth_events": []string{"$create"}, "depth": 5, "origin_server_ts": 1}}))
						return
					}
					if status == 0 {
						select {
						case <-hang:
						case <-r.Context().Done():
						}
						return
					}
					w.WriteHeader(status)
					_, _ = w.Write([]byte(`{"errcode":"M_FORBIDDEN","error":"no"}`))
				})
				mux.HandleFunc("/_matrix/federation/v2/send_leave/", func(w http.ResponseWriter, r *http.Request) {
					sendLeaves.Add(1)
					_, _ = w.Write([]byte(`{}`))
				})
			})
			return name
		}
		exec := func(query string, args ...any) {
			t.Helper()
			if err := b.HS.DB.Write(context.Background(), func(tx storage.Tx) error {
				_, err := tx.Exec(context.Background(), query, args...)
				return err
			}); err != nil {
				t.Fatal(err)
			}
		}
		invite := func(roomID, server string) {
			t.Helper()
			event := mustJSON(map[string]any{"type": "m.room.member", "sender": "@carol:" + server, "state_key": bob,
				"room_id": roomID, "content": map[string]string{"membership": "invite"}, "depth": 7,
				"auth_events": []string{"$create", "$power"}, "prev_events": []string{"$prev"},
				"origin_server_ts": 1, "hashes": map[string]string{"sha256": "x"}})
			exec(`INSERT INTO federation_remote_invites (user_id, room_id, event_id, room_version,
				event, invite_room_state, received_ts, stream_pos, membership, via_server) VALUES ($1, $2, $3, '10', $4, '[]', 1, 0, 'invite', '')`,
				bob, roomID, "$invite-"+strings.TrimPrefix(roomID, "!"), string(event))
		}
		pending := func(roomID string) string {
			var m string
			err := b.HS.DB.Reader().QueryRow(context.Background(), `SELECT membership FROM federation_remote_invites WHERE user_id = $1 AND room_id = $2`,
				bob, roomID).Scan(&m)
			if err != nil {
				return ""
			}
			return m
		}
		for _, c := range []struct {
			name   string
			server string
		}{
			{"403", answering(http.StatusForbidden)},
			{"404", answering(http.StatusNotFound)},
			{"400", answering(http.StatusBadRequest)},
			{"401", answering(http.StatusUnauthorized)},
			{"429", answering(http.StatusTooManyRequests)},
			{"500", answering(http.StatusInternalServerError)},
			{"no answer before the deadline", answering(0)},
			{"tampered template", answering(tampered)},
			{"unresolvable", "unresolvable.invalid"},
		} {
			roomID := "!" + strings.ReplaceAll(c.name, " ", "") + ":" + c.server
			invite(roomID, c.server)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			err := b.HS.Federation.LeaveRemote(ctx, roomID, bob, nil)
			cancel()
			if err != nil {
				t.Errorf("%s: LeaveRemote: %v, want a local leave", c.name, err)
			}
			if m := pending(roomID); m != "leave" {
				t.Errorf("%s: pending membership %q, want leave", c.name, m)
			}
		}

		if n := sendLeaves.Load(); n != 0 {
			t.Errorf("send_leave called %d times", n)
		}

		roomID := "!cancelled:" + answering(0)
		invite(roomID, strings.TrimPrefix(roomID, "!cancelled:"))
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(300*time.Millisecond, cancel)
		if err := b.HS.Federation.LeaveRemote(ctx, roomID, bob, nil); err == nil {
			t.Errorf("cancelled LeaveRemote succeeded")
		}
		if m := pending(roomID); m != "invite" {
			t.Errorf("cancelled LeaveRemote: pending membership %q, want the invite kept", m)
		}

		// A new invite that comes while the local leave is built is left
		// pending: the user rejected the one before it.
		renewed := "!renewed:" + answering(http.StatusForbidden)
		invite(renewed, strings.TrimPrefix(renewed, "!renewed:"))
		b.HS.Federation.BeforeLocalLeave(func() {
			exec(`UPDATE federation_remote_invites SET event_id = '$newer-invite' WHERE user_id = $1 AND room_id = $2`, bob, renewed)
		})
		err := b.HS.Federation.LeaveRemote(context.Background(), renewed, bob, nil)
		b.HS.Federation.BeforeLocalLeave(nil)
		if err != nil {
			t.Errorf("LeaveRemote with a new invite come meanwhile: %v", err)
		}
		var eventID string
		if err := b.HS.DB.Reader().QueryRow(context.Background(), `SELECT event_id FROM federation_remote_invites WHERE user_id = $1 AND room_id = $2`,
			bob, renewed).Scan(&eventID); err != nil || eventID != "$newer-invite" || pending(renewed) != "invite" {
			t.Errorf("the new invite: %q %q, %v; want it still pending", eventID, pending(renewed), err)
		}

		none := "!none:" + answering(http.StatusForbidden)
		if err := b.HS.Federation.LeaveRemote(context.Background(), none, bob, []string{strings.TrimPrefix(none, "!none:")}); err == nil {
			t.Errorf("LeaveRemote with no pending invite succeeded")
		}
		if m := pending(none); m != "" {
			t.Errorf("LeaveRemote with no pending invite wrote %q", m)
		}
	})
}
