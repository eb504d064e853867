package federationapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// searchHit is one result of POST /search as the tests read it.
type searchHit struct {
	EventID id.EventID
	Body    string
}

// searchPage runs one room_events search as u and returns its results
// and next_batch.
func (u *syncer) searchPage(criteria map[string]any, nextBatch string) ([]searchHit, string) {
	u.t.Helper()
	query := map[string]string{}
	if nextBatch != "" {
		query["next_batch"] = nextBatch
	}
	var resp struct {
		SearchCategories struct {
			RoomEvents struct {
				Results []struct {
					Result struct {
						EventID id.EventID `json:"event_id"`
						Content struct {
							Body  string `json:"body"`
							Topic string `json:"topic"`
						} `json:"content"`
					} `json:"result"`
				} `json:"results"`
				NextBatch string `json:"next_batch"`
			} `json:"room_events"`
		} `json:"search_categories"`
	}
	body := map[string]any{"search_categories": map[string]any{"room_events": criteria}}
	if _, err := u.cli.MakeRequest(context.Background(), "POST", u.cli.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "search"}, query), body, &resp); err != nil {
		u.t.Fatalf("%s searching: %v", u.id(), err)
	}
	var out []searchHit
	for _, r := range resp.SearchCategories.RoomEvents.Results {
		text := r.Result.Content.Body
		if text == "" {
			text = r.Result.Content.Topic
		}
		out = append(out, searchHit{r.Result.EventID, text})
	}
	return out, resp.SearchCategories.RoomEvents.NextBatch
}

// searchAll follows next_batch to the end and returns every result's text.
func (u *syncer) searchAll(criteria map[string]any) []string {
	u.t.Helper()
	var out []string
	next := ""
	for page := 0; page < 50; page++ {
		hits, nb := u.searchPage(criteria, next)
		for _, h := range hits {
			out = append(out, h.Body)
		}
		if nb == "" {
			return out
		}
		next = nb
	}
	u.t.Fatalf("search did not end after 50 pages: %q", out)
	return nil
}

// scrollBack pages /messages backwards through roomID to its start, as
// a client scrolling up does: what B lacks it backfills from the other
// server.
func (u *syncer) scrollBack(roomID id.RoomID) {
	u.t.Helper()
	from := ""
	for page := 0; page < 30; page++ {
		resp, err := u.cli.Messages(context.Background(), roomID, from, "", mautrix.DirectionBackward, nil, 10)
		if err != nil {
			u.t.Fatalf("/messages in %s: %v", roomID, err)
		}
		if resp.End == "" {
			return
		}
		from = resp.End
	}
	u.t.Fatalf("/messages in %s did not reach the start", roomID)
}

// TestSearchBackfilledHistory: bob on B joins alice's rooms on A and
// scrolls back; B stores what it fetched with /backfill as history,
// below its event stream. Server-side search on B then finds that
// history — every message once, newest first across pages, a topic
// that came in the join's state (an outlier that backfill placed in the
// timeline) once — but not a message redacted before the join, not
// history that history visibility hides from bob (a room whose history
// is visible to joined members only), and no longer a backfilled
// message alice redacts afterwards. Before scrolling back, B holds none
// of it, and search finds none.
// Spec: client-server-api, "Server Side Search" (the rooms the user has
// been in, checked against history visibility) and "Redactions".
func TestSearchBackfilledHistory(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		a, b := n.start(), n.start()
		alice, bob := a.register("alice"), b.register("bob")
		roomID := alice.publicAliasedRoom("orchard")
		if _, err := alice.cli.SendStateEvent(ctx, roomID, event.StateTopic, "", map[string]any{"topic": "kumquat groves"}); err != nil {
			t.Fatal(err)
		}
		const prior = 13
		ids := make([]id.EventID, prior)
		for i := range prior {
			ids[i] = alice.send(roomID, fmt.Sprintf("kumquat %02d", i))
			if i == 6 {
				gone := alice.send(roomID, "kumquat redacted before the join")
				if _, err := alice.cli.RedactEvent(ctx, roomID, gone); err != nil {
					t.Fatal(err)
				}
			}
		}
		hidden := alice.publicAliasedRoom("hidden")
		if _, err := alice.cli.SendStateEvent(ctx, hidden, event.StateHistoryVisibility, "", map[string]any{"history_visibility": "joined"}); err != nil {
			t.Fatal(err)
		}
		alice.send(hidden, "kumquat before bob joined")
		for _, alias := range []string{"#orchard:" + a.Name, "#hidden:" + a.Name} {
			if _, err := bob.cli.JoinRoom(ctx, alias, nil); err != nil {
				t.Fatalf("bob joining %s: %v", alias, err)
			}
		}
		bob.syncOnce()

		recent := map[string]any{"search_term": "kumquat", "order_by": "recent", "filter": map[string]any{"limit": 4}}
		if got := bob.searchAll(recent); len(got) != 0 {
			t.Fatalf("before scrolling back, bob found %q", got)
		}
		bob.scrollBack(roomID)
		bob.scrollBack(hidden)

		var want []string
		for i := prior - 1; i >= 0; i-- {
			want = append(want, fmt.Sprintf("kumquat %02d", i))
		}
		want = append(want, "kumquat groves") // the topic, set before the messages
		if got := bob.searchAll(recent); !slices.Equal(got, want) {
			t.Fatalf("recent search over the backfilled history:\n got %q\nwant %q", got, want)
		}
		ranked := bob.searchAll(map[string]any{"search_term": "kumquat", "filter": map[string]any{"limit": 5}})
		slices.Sort(ranked)
		if sorted := slices.Sorted(slices.Values(want)); !slices.Equal(ranked, sorted) {
			t.Fatalf("ranked search over the backfilled history:\n got %q\nwant %q", ranked, sorted)
		}
		topics := bob.searchAll(map[string]any{"search_term": "kumquat", "keys": []string{"content.topic"}})
		if !slices.Equal(topics, []string{"kumquat groves"}) {
			t.Fatalf("topic search over the backfilled history: %q", topics)
		}

		// A redaction arriving later takes the backfilled text out.
		redaction, err := alice.cli.RedactEvent(ctx, roomID, ids[3])
		if err != nil {
			t.Fatal(err)
		}
		bob.await("alice's redaction", func() bool {
			return slices.ContainsFunc(bob.timeline[roomID], func(e *event.Event) bool { return e.ID == redaction.EventID })
		})
		// And the stream and the history are searched as one.
		alice.send(roomID, "kumquat after the backfill")
		bob.await("alice's new message", func() bool { return bob.sawMessage(roomID, alice.id(), "kumquat after the backfill") })
		want = slices.DeleteFunc(want, func(s string) bool { return s == "kumquat 03" })
		want = append([]string{"kumquat after the backfill"}, want...)
		if got := bob.searchAll(recent); !slices.Equal(got, want) {
			t.Fatalf("recent search after a redaction and a new message:\n got %q\nwant %q", got, want)
		}
		if hits, _ := bob.searchPage(map[string]any{"search_term": "kumquat 03"}, ""); len(hits) != 0 {
			raw, _ := json.Marshal(hits)
			t.Fatalf("the redacted message is still found: %s", raw)
		}
	})
}

// TestBackfilledEventRedactedFirst: alice's message on A predates bob's
// join, her redaction of it follows the join, so B receives the
// redaction over /send before it holds the message; when bob scrolls
// back, B backfills the message. B must store it redacted, as the
// redaction it already holds demands: search does not find its text,
// and /messages, /event and /context serve it with its content pruned.
// Spec: client-server-api, "Redactions"; "Server Side Search".
func TestBackfilledEventRedactedFirst(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		a, b := n.start(), n.start()
		alice, bob := a.register("alice"), b.register("bob")
		roomID := alice.publicAliasedRoom("quince")
		alice.send(roomID, "quince kept")
		target := alice.send(roomID, "quince secret")
		alice.send(roomID, "quince after")
		if _, err := bob.cli.JoinRoom(ctx, "#quince:"+a.Name, nil); err != nil {
			t.Fatal(err)
		}
		bob.syncOnce()
		redaction, err := alice.cli.RedactEvent(ctx, roomID, target)
		if err != nil {
			t.Fatal(err)
		}
		bob.await("alice's redaction", func() bool {
			return slices.ContainsFunc(bob.timeline[roomID], func(e *event.Event) bool { return e.ID == redaction.EventID })
		})
		bob.scrollBack(roomID)

		got := bob.searchAll(map[string]any{"search_term": "quince", "order_by": "recent", "keys": []string{"content.body"}})
		if want := []string{"quince after", "quince kept"}; !slices.Equal(got, want) {
			t.Fatalf("search after backfilling a message whose redaction came first:\n got %q\nwant %q", got, want)
		}
		if hits, _ := bob.searchPage(map[string]any{"search_term": "secret"}, ""); len(hits) != 0 {
			raw, _ := json.Marshal(hits)
			t.Fatalf("the redacted message is found: %s", raw)
		}
		redacted := func(where string, e *event.Event) {
			t.Helper()
			if len(e.Content.Raw) != 0 {
				t.Fatalf("%s serves the redacted message with content %v", where, e.Content.Raw)
			}
			if e.Unsigned.RedactedBecause == nil || e.Unsigned.RedactedBecause.ID != redaction.EventID {
				t.Fatalf("%s: redacted_because is %+v, want %s", where, e.Unsigned.RedactedBecause, redaction.EventID)
			}
		}
		ev, err := bob.cli.GetEvent(ctx, roomID, target)
		if err != nil {
			t.Fatal(err)
		}
		redacted("/event", ev)
		c, err := bob.cli.Context(ctx, roomID, target, nil, 3)
		if err != nil {
			t.Fatal(err)
		}
		redacted("/context", c.Event)
		found := false
		from := ""
		for page := 0; page < 30 && !found; page++ {
			resp, err := bob.cli.Messages(ctx, roomID, from, "", mautrix.DirectionBackward, nil, 10)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range resp.Chunk {
				if e.ID == target {
					redacted("/messages", e)
					found = true
				}
			}
			if resp.End == "" {
				break
			}
			from = resp.End
		}
		if !found {
			t.Fatal("/messages does not list the backfilled message")
		}
	})
}
