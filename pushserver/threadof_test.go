package pushserver

import (
	"encoding/json"
	"testing"

	"github.com/myelin-chat/myelin/roomserver"
)

// TestThreadOf: an m.thread reply is in its root's thread; an event
// relating to a thread reply (a reaction, an edit, a reference) is in
// that thread, and so is one relating to such an event; one relating to
// a main-timeline event, to a thread root or to an event never seen is
// in the main timeline. Only the events in a thread are remembered: a
// main-timeline event's answer is what a miss answers.
// Spec: client-server-api, "Marking notifications as read" (threads).
func TestThreadOf(t *testing.T) {
	s := &Server{threads: map[string]string{}}
	ev := func(id, content string) *roomserver.Event {
		return &roomserver.Event{EventID: id, Content: json.RawMessage(content)}
	}
	rel := func(relType, target string) string {
		return `{"body":"x","m.relates_to":{"rel_type":"` + relType + `","event_id":"` + target + `"}}`
	}
	for _, c := range []struct {
		ev   *roomserver.Event
		want string
	}{
		{ev("$root", `{"body":"root"}`), mainThread},
		{ev("$plain", `{"body":"plain"}`), mainThread},
		{ev("$reply", rel("m.thread", "$root")), "$root"},
		{ev("$reaction", `{"m.relates_to":{"rel_type":"m.annotation","event_id":"$reply","key":"👍"}}`), "$root"},
		{ev("$edit-of-reaction-target", rel("m.replace", "$reaction")), "$root"},
		{ev("$reaction-to-root", `{"m.relates_to":{"rel_type":"m.annotation","event_id":"$root","key":"👍"}}`), mainThread},
		{ev("$edit-of-plain", rel("m.replace", "$plain")), mainThread},
		{ev("$reference-to-unknown", rel("m.reference", "$never-seen")), mainThread},
		{ev("$reply-to-reaction-to-root", rel("m.reference", "$reaction-to-root")), mainThread},
	} {
		if got := s.threadOf(c.ev); got != c.want {
			t.Errorf("threadOf(%s) = %q, want %q", c.ev.EventID, got, c.want)
		}
	}
	want := map[string]string{"$reply": "$root", "$reaction": "$root", "$edit-of-reaction-target": "$root"}
	if len(s.threads) != len(want) {
		t.Errorf("remembered %v, want only the events in a thread %v", s.threads, want)
	}
	for id, thread := range want {
		if s.threads[id] != thread {
			t.Errorf("remembered %s in %q, want %q", id, s.threads[id], thread)
		}
	}
}
