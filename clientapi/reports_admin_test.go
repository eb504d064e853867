package clientapi_test

import (
	"fmt"
	"net/url"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/storage"
)

// reportIDs lists the "id" of each report of a listing.
func reportIDs(t *testing.T, body map[string]any, key string) []int64 {
	t.Helper()
	list, isList := body[key].([]any)
	if !isList {
		t.Fatalf("%s missing from %v", key, body)
	}
	ids := make([]int64, 0, len(list))
	for _, item := range list {
		obj, _ := item.(map[string]any)
		n, _ := obj["id"].(float64)
		ids = append(ids, int64(n))
	}
	return ids
}

func sameReportIDs(a, b []int64) bool {
	return fmt.Sprint(a) == fmt.Sprint(b)
}

// TestAdminEventReports: server administrators list event reports (newest
// first by default, oldest first with dir=f, paged by from/limit with
// total and next_token, filtered by reporter and room), read one with the
// reported event, and delete one; room reports live in the same table and
// never appear among event reports nor answer to their IDs.
// Synapse admin API, "Show reported events".
func TestAdminEventReports(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob, carol, dave := newUser(t, srv, "alice"), newUser(t, srv, "bob"), newUser(t, srv, "carol"), newUser(t, srv, "dave")
		admin := newAdmin(t, srv, "root").token
		room, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Spam room",
			Topic: "all the spam", RoomAliasName: "spam"})
		ok(t, "create", err)
		other, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		ok(t, "create other", err)
		for _, u := range []*user{bob, carol} {
			_, err := u.JoinRoomByID(bg, room.RoomID)
			ok(t, "join", err)
		}
		_, err = bob.JoinRoomByID(bg, other.RoomID)
		ok(t, "join other", err)
		var msgs []id.EventID
		for i := range 3 {
			resp, err := alice.SendText(bg, room.RoomID, fmt.Sprintf("bad words %d", i))
			ok(t, "send", err)
			msgs = append(msgs, resp.EventID)
		}
		otherMsg, err := alice.SendText(bg, other.RoomID, "more bad words")
		ok(t, "send other", err)

		reportPath := func(roomID id.RoomID, eventID id.EventID) string {
			return srv.URL + "/_matrix/client/v3/rooms/" + url.PathEscape(roomID.String()) + "/report/" + url.PathEscape(eventID.String())
		}
		// Reports, in ID order 1..5: event, event (with an old-style
		// score), room, event, event in the other room.
		ok(t, "bob reports msg 0", bob.ReportEvent(bg, room.RoomID, msgs[0], "spam 0"))
		st, body := call(t, "POST", reportPath(room.RoomID, msgs[1]), carol.token, map[string]any{"reason": "spam 1", "score": -50})
		if st != 200 {
			t.Fatalf("carol reports msg 1: %d %v", st, body)
		}
		ok(t, "dave reports the room", dave.ReportRoom(bg, room.RoomID, "whole room"))
		ok(t, "bob reports msg 2", bob.ReportEvent(bg, room.RoomID, msgs[2], "spam 2"))
		ok(t, "bob reports in the other room", bob.ReportEvent(bg, other.RoomID, otherMsg.EventID, "elsewhere"))

		base := srv.URL + "/_synapse/admin/v1/event_reports"
		list := func(query string) map[string]any {
			t.Helper()
			st, body := call(t, "GET", base+query, admin, nil)
			if st != 200 {
				t.Fatalf("GET event_reports%s: %d %v", query, st, body)
			}
			return body
		}

		// Everything, newest first; the room report (3) is not an event report.
		body = list("")
		if ids := reportIDs(t, body, "event_reports"); !sameReportIDs(ids, []int64{5, 4, 2, 1}) || body["total"] != float64(4) {
			t.Fatalf("list: ids %v total %v, want [5 4 2 1] and 4", ids, body["total"])
		}
		if _, has := body["next_token"]; has {
			t.Fatalf("list of everything has next_token: %v", body)
		}
		first, _ := body["event_reports"].([]any)
		got, _ := first[3].(map[string]any)
		want := map[string]any{"id": float64(1), "event_id": msgs[0].String(), "room_id": room.RoomID.String(),
			"user_id": bob.id.String(), "sender": alice.id.String(), "reason": "spam 0", "score": nil,
			"name": "Spam room", "canonical_alias": "#spam:localhost"}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("report 1 %s = %v, want %v", k, got[k], v)
			}
		}
		if ts, _ := got["received_ts"].(float64); ts <= 0 {
			t.Errorf("report 1 received_ts = %v", got["received_ts"])
		}
		if score := first[2].(map[string]any)["score"]; score != float64(-50) {
			t.Errorf("report 2 score = %v, want -50", score)
		}
		if name := first[0].(map[string]any)["name"]; name != nil {
			t.Errorf("report 5 (unnamed room) name = %v, want null", name)
		}

		// Oldest first.
		if ids := reportIDs(t, list("?dir=f"), "event_reports"); !sameReportIDs(ids, []int64{1, 2, 4, 5}) {
			t.Fatalf("dir=f: %v", ids)
		}
		// Pages of 3: the second page ends the listing.
		body = list("?limit=3")
		if ids := reportIDs(t, body, "event_reports"); !sameReportIDs(ids, []int64{5, 4, 2}) || body["next_token"] != float64(3) || body["total"] != float64(4) {
			t.Fatalf("page 1 of 3: %v", body)
		}
		body = list("?limit=3&from=3")
		if ids := reportIDs(t, body, "event_reports"); !sameReportIDs(ids, []int64{1}) || body["total"] != float64(4) {
			t.Fatalf("page 2 of 3: %v", body)
		}
		if _, has := body["next_token"]; has {
			t.Fatalf("last page has next_token: %v", body)
		}
		// Pages of 2 end exactly at the total: no next_token after the second.
		body = list("?limit=2&dir=f")
		if ids := reportIDs(t, body, "event_reports"); !sameReportIDs(ids, []int64{1, 2}) || body["next_token"] != float64(2) {
			t.Fatalf("page 1 of 2: %v", body)
		}
		body = list("?limit=2&dir=f&from=2")
		if ids := reportIDs(t, body, "event_reports"); !sameReportIDs(ids, []int64{4, 5}) {
			t.Fatalf("page 2 of 2: %v", body)
		}
		if _, has := body["next_token"]; has {
			t.Fatalf("page ending at the total has next_token: %v", body)
		}
		// Past the end: empty, still the total.
		body = list("?from=4")
		if ids := reportIDs(t, body, "event_reports"); len(ids) != 0 || body["total"] != float64(4) {
			t.Fatalf("from=4: %v", body)
		}

		// A limit above the cap (1000) is lowered to it, not refused.
		if body := list("?limit=5000"); !sameReportIDs(reportIDs(t, body, "event_reports"), []int64{5, 4, 2, 1}) {
			t.Fatalf("limit=5000: %v", body)
		}

		// Filters match IDs that contain the value, case-sensitively; total
		// counts the matches.
		for _, c := range []struct {
			query string
			ids   []int64
		}{
			{"?user_id=" + url.QueryEscape(bob.id.String()), []int64{5, 4, 1}},
			{"?user_id=carol", []int64{2}},
			{"?user_id=CAROL", []int64{}},
			{"?user_id=dave", []int64{}},
			{"?room_id=" + url.QueryEscape(other.RoomID.String()), []int64{5}},
			{"?room_id=" + url.QueryEscape(room.RoomID.String()) + "&user_id=bob", []int64{4, 1}},
			{"?user_id=bob&limit=1&from=1", []int64{4}},
		} {
			body := list(c.query)
			ids := reportIDs(t, body, "event_reports")
			if !sameReportIDs(ids, c.ids) {
				t.Errorf("%s: ids %v, want %v", c.query, ids, c.ids)
			}
			if c.query == "?user_id=bob&limit=1&from=1" {
				if body["total"] != float64(3) || body["next_token"] != float64(2) {
					t.Errorf("%s: %v, want total 3 next_token 2", c.query, body)
				}
			} else if body["total"] != float64(len(c.ids)) {
				t.Errorf("%s: total %v, want %d", c.query, body["total"], len(c.ids))
			}
		}

		// One report, with the event.
		st, body = call(t, "GET", base+"/2", admin, nil)
		if st != 200 || body["id"] != float64(2) || body["event_id"] != msgs[1].String() || body["user_id"] != carol.id.String() ||
			body["sender"] != alice.id.String() || body["reason"] != "spam 1" {
			t.Fatalf("GET report 2: %d %v", st, body)
		}
		ev, _ := body["event_json"].(map[string]any)
		content, _ := ev["content"].(map[string]any)
		if ev["event_id"] != nil && ev["event_id"] != msgs[1].String() || content["body"] != "bad words 1" || ev["sender"] != alice.id.String() {
			t.Fatalf("report 2 event_json = %v", body["event_json"])
		}

		// Bad parameters, unknown IDs, the room report's ID.
		for _, c := range []struct {
			method, path string
			status       int
			errcode      string
		}{
			{"GET", "?limit=0", 400, "M_INVALID_PARAM"},
			{"GET", "?limit=-1", 400, "M_INVALID_PARAM"},
			{"GET", "?limit=ten", 400, "M_INVALID_PARAM"},
			{"GET", "?from=-1", 400, "M_INVALID_PARAM"},
			{"GET", "?from=x", 400, "M_INVALID_PARAM"},
			{"GET", "?dir=up", 400, "M_INVALID_PARAM"},
			{"GET", "?user_id=a%00b", 400, "M_INVALID_PARAM"},
			{"GET", "?room_id=%FF", 400, "M_INVALID_PARAM"},
			{"GET", "/abc", 400, "M_INVALID_PARAM"},
			{"GET", "/-1", 400, "M_INVALID_PARAM"},
			{"DELETE", "/abc", 400, "M_INVALID_PARAM"},
			{"GET", "/999", 404, "M_NOT_FOUND"},
			{"GET", "/3", 404, "M_NOT_FOUND"},
			{"DELETE", "/999", 404, "M_NOT_FOUND"},
			{"DELETE", "/3", 404, "M_NOT_FOUND"},
		} {
			st, body := call(t, c.method, base+c.path, admin, nil)
			expectError(t, c.method+" event_reports"+c.path, st, body, c.status, c.errcode)
		}

		// Delete: gone from the listing and from GET; a second delete is 404.
		st, body = call(t, "DELETE", base+"/4", admin, nil)
		if st != 200 || len(body) != 0 {
			t.Fatalf("DELETE report 4: %d %v", st, body)
		}
		st, body = call(t, "GET", base+"/4", admin, nil)
		expectError(t, "GET deleted report", st, body, 404, "M_NOT_FOUND")
		st, body = call(t, "DELETE", base+"/4", admin, nil)
		expectError(t, "DELETE deleted report", st, body, 404, "M_NOT_FOUND")
		if body := list(""); !sameReportIDs(reportIDs(t, body, "event_reports"), []int64{5, 2, 1}) || body["total"] != float64(3) {
			t.Fatalf("after delete: %v", body)
		}
		// The room report survived the DELETE of its ID as an event report.
		st, body = call(t, "GET", srv.URL+"/_synapse/admin/v1/room_reports/3", admin, nil)
		if st != 200 || body["room_id"] != room.RoomID.String() {
			t.Fatalf("room report 3 after DELETE event_reports/3: %d %v", st, body)
		}
	})
}

// TestAdminRoomReports: room reports are listed (next_batch, as Synapse
// names it), read and deleted apart from event reports, with the room's
// name, canonical alias and topic.
func TestAdminRoomReports(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob, carol := newUser(t, srv, "alice"), newUser(t, srv, "bob"), newUser(t, srv, "carol")
		admin := newAdmin(t, srv, "root").token
		room, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Bad room",
			Topic: "bad things", RoomAliasName: "bad"})
		ok(t, "create", err)
		plain, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		ok(t, "create plain", err)
		msg, err := alice.SendText(bg, room.RoomID, "hello")
		ok(t, "send", err)
		ok(t, "event report", alice.ReportEvent(bg, room.RoomID, msg.EventID, "event")) // 1
		ok(t, "bob reports the room", bob.ReportRoom(bg, room.RoomID, "room by bob"))   // 2
		ok(t, "carol reports the room", carol.ReportRoom(bg, room.RoomID, "by carol"))  // 3
		// A blank reason (mautrix would leave the field out: raw call). 4
		if st, body := call(t, "POST", srv.URL+"/_matrix/client/v3/rooms/"+url.PathEscape(plain.RoomID.String())+"/report",
			bob.token, map[string]any{"reason": ""}); st != 200 {
			t.Fatalf("bob reports plain: %d %v", st, body)
		}

		base := srv.URL + "/_synapse/admin/v1/room_reports"
		st, body := call(t, "GET", base, admin, nil)
		if st != 200 || !sameReportIDs(reportIDs(t, body, "room_reports"), []int64{4, 3, 2}) || body["total"] != float64(3) {
			t.Fatalf("list: %d %v", st, body)
		}
		reports, _ := body["room_reports"].([]any)
		byBob, _ := reports[2].(map[string]any)
		for k, v := range map[string]any{"room_id": room.RoomID.String(), "user_id": bob.id.String(), "reason": "room by bob",
			"name": "Bad room", "canonical_alias": "#bad:localhost", "topic": "bad things"} {
			if byBob[k] != v {
				t.Errorf("report 2 %s = %v, want %v", k, byBob[k], v)
			}
		}
		if _, has := byBob["event_id"]; has {
			t.Errorf("room report has event_id: %v", byBob)
		}
		plainReport, _ := reports[0].(map[string]any)
		if plainReport["name"] != nil || plainReport["topic"] != nil || plainReport["canonical_alias"] != nil || plainReport["reason"] != "" {
			t.Errorf("report 4 of a room without name, topic or alias: %v", plainReport)
		}
		st, body = call(t, "GET", base+"?limit=2&user_id=bob", admin, nil)
		if st != 200 || !sameReportIDs(reportIDs(t, body, "room_reports"), []int64{4, 2}) || body["total"] != float64(2) {
			t.Fatalf("bob's: %d %v", st, body)
		}
		if _, has := body["next_batch"]; has {
			t.Fatalf("bob's two reports in a page of 2 have next_batch: %v", body)
		}
		st, body = call(t, "GET", base+"?limit=1&dir=f&room_id="+url.QueryEscape(room.RoomID.String()), admin, nil)
		if st != 200 || !sameReportIDs(reportIDs(t, body, "room_reports"), []int64{2}) || body["next_batch"] != float64(1) || body["total"] != float64(2) {
			t.Fatalf("room filter, page of 1: %d %v", st, body)
		}
		st, body = call(t, "GET", base+"/1", admin, nil)
		expectError(t, "the event report's ID as a room report", st, body, 404, "M_NOT_FOUND")
		st, body = call(t, "GET", base+"/3", admin, nil)
		if st != 200 || body["reason"] != "by carol" || body["topic"] != "bad things" {
			t.Fatalf("GET room report 3: %d %v", st, body)
		}
		st, body = call(t, "DELETE", base+"/1", admin, nil)
		expectError(t, "DELETE the event report through room_reports", st, body, 404, "M_NOT_FOUND")
		st, _ = call(t, "DELETE", base+"/3", admin, nil)
		if st != 200 {
			t.Fatalf("DELETE room report 3: %d", st)
		}
		st, body = call(t, "GET", base, admin, nil)
		if st != 200 || !sameReportIDs(reportIDs(t, body, "room_reports"), []int64{4, 2}) {
			t.Fatalf("after delete: %d %v", st, body)
		}
		st, body = call(t, "GET", srv.URL+"/_synapse/admin/v1/event_reports/1", admin, nil)
		if st != 200 {
			t.Fatalf("event report 1 after the room reports' deletes: %d %v", st, body)
		}
	})
}

// TestAdminReportsRefused: without an access token 401; a user who is not
// a server administrator gets 403 M_FORBIDDEN from every report endpoint
// before anything is parsed or looked up (a bad parameter or an unknown
// ID answers the same), and deletes nothing. A deactivated administrator
// is no administrator.
func TestAdminReportsRefused(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		admin := newAdmin(t, srv, "root").token
		room, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		ok(t, "create", err)
		msg, err := alice.SendText(bg, room.RoomID, "hello")
		ok(t, "send", err)
		ok(t, "report", alice.ReportEvent(bg, room.RoomID, msg.EventID, "mine"))
		ok(t, "room report", bob.ReportRoom(bg, room.RoomID, "room"))
		ok(t, "user report", bob.ReportUser(bg, alice.id, "user"))

		for _, kind := range []string{"event_reports", "room_reports", "user_reports"} {
			base := srv.URL + "/_synapse/admin/v1/" + kind
			for _, c := range []struct{ method, path string }{
				{"GET", ""}, {"GET", "?limit=-5&dir=x"}, {"GET", "/1"}, {"GET", "/2"}, {"GET", "/999"}, {"GET", "/abc"},
				{"DELETE", "/1"}, {"DELETE", "/2"}, {"DELETE", "/999"}, {"DELETE", "/abc"},
			} {
				st, body := call(t, c.method, base+c.path, alice.token, nil)
				expectError(t, "alice: "+c.method+" "+kind+c.path, st, body, 403, "M_FORBIDDEN")
				st, body = call(t, c.method, base+c.path, "", nil)
				expectError(t, "no token: "+c.method+" "+kind+c.path, st, body, 401, "M_MISSING_TOKEN")
			}
			st, body := call(t, "GET", base, admin, nil)
			if st != 200 || body["total"] != float64(1) {
				t.Fatalf("%s after refused deletes: %d %v, want total 1", kind, st, body)
			}
		}
		_, err = srv.HS.ClientAPI.Accounts().CreateUser(bg, "former", testPassword, true)
		ok(t, "create former admin", err)
		login, err := client(t, srv, "", "").Login(bg, passwordLogin("former"))
		ok(t, "former admin login", err)
		ok(t, "deactivate", srv.HS.ClientAPI.Accounts().Deactivate(bg, "former"))
		st, body := call(t, "GET", srv.URL+"/_synapse/admin/v1/event_reports", login.AccessToken, nil)
		if st == 200 {
			t.Fatalf("a deactivated administrator listed reports: %v", body)
		}
	})
}

// TestReportUser: POST /users/{userId}/report stores a report about a
// user of this server or another, from anyone (no shared room needed);
// reason is required and may be blank; a user of this server that does
// not exist is answered 200 like the others and nothing is stored.
// Administrators list (filters user_id and target_user_id), read and
// delete them. Spec: client-server-api, "POST
// /_matrix/client/v3/users/{userId}/report".
func TestReportUser(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob, carol := newUser(t, srv, "alice"), newUser(t, srv, "bob"), newUser(t, srv, "carol")
		admin := newAdmin(t, srv, "root").token
		reportURL := func(userID string) string {
			return srv.URL + "/_matrix/client/v3/users/" + url.PathEscape(userID) + "/report"
		}
		post := func(token, userID string, body any) (int, map[string]any) {
			return call(t, "POST", reportURL(userID), token, body)
		}
		for _, c := range []struct {
			what, token, target string
			body                any
		}{
			{"bob about alice", bob.token, alice.id.String(), map[string]any{"reason": "harassment"}},
			{"carol about alice, blank", carol.token, alice.id.String(), map[string]any{"reason": ""}},
			{"bob about a remote user", bob.token, "@spammer:remote.example", map[string]any{"reason": "spam"}},
			{"bob about nobody", bob.token, "@nobody:localhost", map[string]any{"reason": "who?"}},
		} {
			if st, body := post(c.token, c.target, c.body); st != 200 || len(body) != 0 {
				t.Fatalf("%s: %d %v, want 200 {}", c.what, st, body)
			}
		}
		for _, c := range []struct {
			what, target string
			body         any
			status       int
			errcode      string
		}{
			{"no reason", alice.id.String(), map[string]any{}, 400, "M_MISSING_PARAM"},
			{"reason not a string", alice.id.String(), map[string]any{"reason": 5}, 400, "M_BAD_JSON"},
			{"long reason", alice.id.String(), map[string]any{"reason": strings.Repeat("x", 4097)}, 400, "M_INVALID_PARAM"},
			{"not a user ID", "alice", map[string]any{"reason": "x"}, 400, "M_INVALID_PARAM"},
			{"no server name", "@alice", map[string]any{"reason": "x"}, 400, "M_INVALID_PARAM"},
			{"body not JSON", alice.id.String(), "{", 400, "M_NOT_JSON"},
		} {
			st, body := post(bob.token, c.target, c.body)
			expectError(t, c.what, st, body, c.status, c.errcode)
		}
		st, body := post("", alice.id.String(), map[string]any{"reason": "x"})
		expectError(t, "no token", st, body, 401, "M_MISSING_TOKEN")

		base := srv.URL + "/_synapse/admin/v1/user_reports"
		st, body = call(t, "GET", base, admin, nil)
		if st != 200 || !sameReportIDs(reportIDs(t, body, "user_reports"), []int64{3, 2, 1}) || body["total"] != float64(3) {
			t.Fatalf("list: %d %v (the report about @nobody must not be stored)", st, body)
		}
		reports, _ := body["user_reports"].([]any)
		first, _ := reports[2].(map[string]any)
		for k, v := range map[string]any{"id": float64(1), "target_user_id": alice.id.String(), "user_id": bob.id.String(), "reason": "harassment"} {
			if first[k] != v {
				t.Errorf("report 1 %s = %v, want %v", k, first[k], v)
			}
		}
		for _, c := range []struct {
			query string
			ids   []int64
		}{
			{"?target_user_id=" + url.QueryEscape(alice.id.String()), []int64{2, 1}},
			{"?target_user_id=remote.example", []int64{3}},
			{"?user_id=carol&dir=f", []int64{2}},
			{"?dir=f&limit=2", []int64{1, 2}},
			{"?room_id=nothing", []int64{3, 2, 1}}, // not a filter of user reports
		} {
			st, body := call(t, "GET", base+c.query, admin, nil)
			if st != 200 || !sameReportIDs(reportIDs(t, body, "user_reports"), c.ids) {
				t.Errorf("%s: %d %v, want %v", c.query, st, body, c.ids)
			}
		}
		st, body = call(t, "GET", base+"?dir=f&limit=2", admin, nil)
		if body["next_token"] != float64(2) || body["total"] != float64(3) {
			t.Errorf("page of 2: %v, want next_token 2 total 3", body)
		}
		st, body = call(t, "GET", base+"/3", admin, nil)
		if st != 200 || body["target_user_id"] != "@spammer:remote.example" || body["reason"] != "spam" {
			t.Fatalf("GET user report 3: %d %v", st, body)
		}
		st, _ = call(t, "DELETE", base+"/3", admin, nil)
		if st != 200 {
			t.Fatalf("DELETE user report 3: %d", st)
		}
		st, body = call(t, "GET", base+"/3", admin, nil)
		expectError(t, "GET deleted user report", st, body, 404, "M_NOT_FOUND")
	})
}

// TestReportUserRateLimited: user reports share the per-user limit of
// sent events and reports; over it, 429 M_LIMIT_EXCEEDED and nothing is
// stored. Spec: client-server-api, "POST /_matrix/client/v3/users/{userId}/report" (429).
func TestReportUserRateLimited(t *testing.T) {
	limited := func(c *config.Config) {
		c.ClientAPI.RateLimits.Enabled = true
		c.ClientAPI.RateLimits.Message = config.RateLimit{PerSecond: 0.01, Burst: 2}
	}
	testserver.ForEachEngine(t, limited, func(t *testing.T, srv *testserver.Server) {
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		for i := range 2 {
			ok(t, fmt.Sprintf("report %d", i), bob.ReportUser(bg, alice.id, "again"))
		}
		err := bob.ReportUser(bg, alice.id, "and again")
		wantErrcode(t, "third report", err, 429, "M_LIMIT_EXCEEDED")
		var n int
		if err := srv.HS.DB.Reader().QueryRow(bg, `SELECT COUNT(*) FROM user_reports`).Scan(&n); err != nil || n != 2 {
			t.Fatalf("%d user reports stored (%v), want 2", n, err)
		}
	})
}

// TestReportRoomReasonRequired: a room report must carry a reason (it may
// be blank); an event report need not. Nothing is stored for a refused
// report. Spec: client-server-api, "POST /_matrix/client/v3/rooms/{roomId}/report"
// (reason: required) and ".../report/{eventId}" (reason: optional).
func TestReportRoomReasonRequired(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice := newUser(t, srv, "alice")
		room, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		ok(t, "create", err)
		msg, err := alice.SendText(bg, room.RoomID, "hello")
		ok(t, "send", err)
		path := srv.URL + "/_matrix/client/v3/rooms/" + url.PathEscape(room.RoomID.String()) + "/report"
		st, body := call(t, "POST", path, alice.token, map[string]any{})
		expectError(t, "room report without reason", st, body, 400, "M_MISSING_PARAM")
		st, body = call(t, "POST", path+"/"+url.PathEscape(msg.EventID.String()), alice.token, map[string]any{})
		if st != 200 {
			t.Fatalf("event report without reason: %d %v", st, body)
		}
		if st, body := call(t, "POST", path, alice.token, map[string]any{"reason": ""}); st != 200 {
			t.Fatalf("room report with a blank reason: %d %v", st, body)
		}
		var rooms, events int
		err = srv.HS.DB.Reader().QueryRow(bg, `SELECT COUNT(CASE WHEN event_id = '' THEN 1 END), COUNT(CASE WHEN event_id <> '' THEN 1 END) FROM room_reports`).Scan(&rooms, &events)
		if err != nil || rooms != 1 || events != 1 {
			t.Fatalf("%d room and %d event reports stored (%v), want 1 and 1", rooms, events, err)
		}
	})
}

// TestReportReasonNUL: a reason holding NUL is refused with 400
// M_INVALID_PARAM for all three kinds (a PostgreSQL text column cannot
// hold it: it was a 500 there), and so are an event ID holding NUL or
// bytes that are not UTF-8, and a user ID outside the printable ASCII
// the user ID grammar allows; nothing is stored.
// Spec: appendices, "User Identifiers" (historical user IDs: %x21-39 / %x3B-7E).
func TestReportReasonNUL(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		room, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		ok(t, "create", err)
		msg, err := alice.SendText(bg, room.RoomID, "hello")
		ok(t, "send", err)
		roomPath := srv.URL + "/_matrix/client/v3/rooms/" + url.PathEscape(room.RoomID.String()) + "/report"
		for what, path := range map[string]string{
			"event": roomPath + "/" + url.PathEscape(msg.EventID.String()),
			"room":  roomPath,
			"user":  srv.URL + "/_matrix/client/v3/users/" + url.PathEscape(bob.id.String()) + "/report",
		} {
			st, body := call(t, "POST", path, alice.token, `{"reason": "bad\u0000words"}`)
			expectError(t, what+" report with NUL", st, body, 400, "M_INVALID_PARAM")
		}
		// IDs holding NUL or bytes that are not UTF-8 (no ID does): 400,
		// not a PostgreSQL error.
		for what, path := range map[string]string{
			"event ID with NUL":             roomPath + "/%24a%00b",
			"event ID not UTF-8":            roomPath + "/%24a%FFb",
			"local user ID with NUL":        srv.URL + "/_matrix/client/v3/users/%40a%00b:localhost/report",
			"remote user ID with NUL":       srv.URL + "/_matrix/client/v3/users/%40a%00b:remote.example/report",
			"remote user ID not UTF-8":      srv.URL + "/_matrix/client/v3/users/%40a%FFb:remote.example/report",
			"remote user ID with a space":   srv.URL + "/_matrix/client/v3/users/%40a%20b:remote.example/report",
			"remote user ID, non-ASCII":     srv.URL + "/_matrix/client/v3/users/%40%C3%A9:remote.example/report",
			"remote user ID with a newline": srv.URL + "/_matrix/client/v3/users/%40a%0Ab:remote.example/report",
		} {
			st, body := call(t, "POST", path, alice.token, map[string]any{"reason": "x"})
			expectError(t, what, st, body, 400, "M_INVALID_PARAM")
		}
		var n int
		err = srv.HS.DB.Reader().QueryRow(bg, `SELECT (SELECT COUNT(*) FROM room_reports) + (SELECT COUNT(*) FROM user_reports)`).Scan(&n)
		if err != nil || n != 0 {
			t.Fatalf("%d reports stored (%v), want 0", n, err)
		}
	})
}

// TestAdminEventReportsSender: an event report records the event's
// sender; sender_user_id lists the reports about one sender's events
// (an exact user ID). A report stored before senders were recorded
// (event_sender ”) still shows its sender, looked up as the reporter
// sees the event.
func TestAdminEventReportsSender(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob, carol := newUser(t, srv, "alice"), newUser(t, srv, "bob"), newUser(t, srv, "carol")
		admin := newAdmin(t, srv, "root").token
		room, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		ok(t, "create", err)
		for _, u := range []*user{bob, carol} {
			_, err := u.JoinRoomByID(bg, room.RoomID)
			ok(t, "join", err)
		}
		byAlice, err := alice.SendText(bg, room.RoomID, "from alice")
		ok(t, "alice sends", err)
		byBob, err := bob.SendText(bg, room.RoomID, "from bob")
		ok(t, "bob sends", err)
		ok(t, "carol reports alice's", carol.ReportEvent(bg, room.RoomID, byAlice.EventID, "1"))
		ok(t, "carol reports bob's", carol.ReportEvent(bg, room.RoomID, byBob.EventID, "2"))
		ok(t, "alice reports bob's", alice.ReportEvent(bg, room.RoomID, byBob.EventID, "3"))
		ok(t, "carol reports the room", carol.ReportRoom(bg, room.RoomID, "4"))

		base := srv.URL + "/_synapse/admin/v1/event_reports"
		for _, c := range []struct {
			query string
			ids   []int64
		}{
			{"?sender_user_id=" + url.QueryEscape(bob.id.String()), []int64{3, 2}},
			{"?sender_user_id=" + url.QueryEscape(alice.id.String()), []int64{1}},
			{"?sender_user_id=bob", []int64{}},
			{"?sender_user_id=" + url.QueryEscape(bob.id.String()) + "&user_id=carol", []int64{2}},
			{"?sender_user_id=" + url.QueryEscape(carol.id.String()), []int64{}},
		} {
			st, body := call(t, "GET", base+c.query, admin, nil)
			if st != 200 || !sameReportIDs(reportIDs(t, body, "event_reports"), c.ids) || body["total"] != float64(len(c.ids)) {
				t.Errorf("%s: %d %v, want %v", c.query, st, body, c.ids)
			}
		}
		st, body := call(t, "GET", srv.URL+"/_synapse/admin/v1/room_reports?sender_user_id=nobody", admin, nil)
		if st != 200 || !sameReportIDs(reportIDs(t, body, "room_reports"), []int64{4}) {
			t.Errorf("room reports ignore sender_user_id: %d %v", st, body)
		}

		// A reporter who can no longer see the event (here: a stranger
		// to the room, whose history is shared with members only): the
		// recorded sender stays; the event is null.
		err = srv.HS.DB.Write(bg, func(tx storage.Tx) error {
			_, err := tx.Exec(bg, `UPDATE room_reports SET reporter = '@stranger:localhost' WHERE report_id = 1`)
			return err
		})
		ok(t, "make report 1 a stranger's", err)
		st, body = call(t, "GET", base+"/1", admin, nil)
		if st != 200 || body["sender"] != alice.id.String() || body["event_json"] != nil {
			t.Fatalf("GET report 1 of a stranger: %d %v, want sender alice and event_json null", st, body)
		}

		// A report from before senders were recorded.
		err = srv.HS.DB.Write(bg, func(tx storage.Tx) error {
			_, err := tx.Exec(bg, `UPDATE room_reports SET event_sender = '' WHERE report_id = 2`)
			return err
		})
		ok(t, "forget the sender of report 2", err)
		st, body = call(t, "GET", base+"?dir=f&limit=2", admin, nil)
		reports, _ := body["event_reports"].([]any)
		if st != 200 || len(reports) != 2 || reports[1].(map[string]any)["sender"] != bob.id.String() {
			t.Fatalf("list with an unrecorded sender: %d %v", st, body)
		}
		st, body = call(t, "GET", base+"/2", admin, nil)
		if ev, _ := body["event_json"].(map[string]any); st != 200 || body["sender"] != bob.id.String() || ev["sender"] != bob.id.String() {
			t.Fatalf("GET report 2 with an unrecorded sender: %d %v", st, body)
		}
	})
}
