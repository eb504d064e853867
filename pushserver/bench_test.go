package pushserver

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"
)

// BenchmarkEvaluate measures push rule evaluation per event per
// recipient with the default rules plus a few user rules (what the
// consumer does for each joined local member after flattening the event
// once). The reported µs/recipient is the figure in docs/benchmarks.md.
func BenchmarkEvaluate(b *testing.B) {
	const recipients = 100
	rules := make([]*compiledRules, recipients)
	for i := range rules {
		u := &userRules{}
		p := fmt.Sprintf("word%d", i)
		if err := u.putRule("content", Rule{RuleID: "w", Pattern: &p, Actions: []json.RawMessage{actNotify}}, "", ""); err != nil {
			b.Fatal(err)
		}
		if err := u.putRule("room", Rule{RuleID: "!muted:x", Actions: []json.RawMessage{}}, "", ""); err != nil {
			b.Fatal(err)
		}
		rules[i] = compile(u.render(fmt.Sprintf("@user%d:x", i)))
	}
	event := []byte(`{"type":"m.room.message","sender":"@alice:x","room_id":"!r:x","event_id":"$e",
		"content":{"msgtype":"m.text","body":"hello everyone, lunch at noon?","m.mentions":{"user_ids":["@user7:x"]}}}`)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	notified := 0
	for i := 0; i < b.N; i++ {
		flat, err := flatten(event)
		if err != nil {
			b.Fatal(err)
		}
		ec := evalContext{event: flat, memberCount: 150, notificationPower: func(string) int64 { return 50 }}
		for _, r := range rules {
			if m := r.evaluate(&ec); m != nil && m.outcome.notify {
				notified++
			}
		}
	}
	elapsed := time.Since(start)
	if notified != b.N*recipients {
		b.Fatalf("notified %d, want %d", notified, b.N*recipients)
	}
	b.ReportMetric(float64(elapsed.Microseconds())/float64(b.N*recipients), "µs/recipient")
}
