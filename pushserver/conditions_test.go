package pushserver

import (
	"encoding/json"
	"testing"
)

// TestConditions evaluates each condition kind against Matrix JSON, with
// the spec's own examples where it has them.
func TestConditions(t *testing.T) {
	const topicEvent = `{"content":{"topic":"Lunch plans"},"event_id":"$1","room_id":"!r:example.org",
		"sender":"@example:example.org","state_key":"","type":"m.room.topic"}`
	const createEvent = `{"content":{"creator":"@example:example.org","m.federate":true,"room_version":"1",
		"count":5,"big":9007199254740993,"nothing":null,"m\\foo":"bs"},
		"event_id":"$2","room_id":"!r:example.org","sender":"@example:example.org","state_key":"","type":"m.room.create"}`
	const aliasEvent = `{"content":{"alias":"#somewhere:localhost","alt_aliases":["#somewhere:example.org","#myroom:example.com",7,true,null]},
		"event_id":"$3","room_id":"!r:example.org","sender":"@example:example.org","state_key":"","type":"m.room.canonical_alias"}`
	body := func(b string) string {
		data, _ := json.Marshal(map[string]any{"type": "m.room.message", "sender": "@a:x", "room_id": "!r:x",
			"content": map[string]any{"msgtype": "m.text", "body": b, "m.mentions": map[string]any{"user_ids": []string{"@bob:x"}, "room": true},
				"m.relates_to": map[string]any{"rel_type": "m.replace", "event_id": "$orig"}}})
		return string(data)
	}
	tests := []struct {
		name      string
		condition string
		event     string
		ctx       func(*evalContext)
		want      bool
	}{
		// event_match: the spec's example pattern lunc?* on content.topic.
		{"glob matches whole value", `{"kind":"event_match","key":"content.topic","pattern":"lunc?*"}`, topicEvent, nil, true},
		{"glob is case-insensitive", `{"kind":"event_match","key":"content.topic","pattern":"LUNCH PLANS"}`, topicEvent, nil, true},
		{"glob must match the whole value", `{"kind":"event_match","key":"content.topic","pattern":"lunch"}`, topicEvent, nil, false},
		{"? needs a character", `{"kind":"event_match","key":"content.topic","pattern":"lunch plans?"}`, topicEvent, nil, false},
		{"absent key never matches, even *", `{"kind":"event_match","key":"content.name","pattern":"*"}`, topicEvent, nil, false},
		{"non-string value never matches", `{"kind":"event_match","key":"content.m\\.federate","pattern":"*"}`, createEvent, nil, false},
		{"empty pattern matches empty state_key", `{"kind":"event_match","key":"state_key","pattern":""}`, topicEvent, nil, true},
		{"type match", `{"kind":"event_match","key":"type","pattern":"m.room.topic"}`, topicEvent, nil, true},
		// content.body: word boundaries (spec example ex*ple).
		{"body glob at word boundary", `{"kind":"event_match","key":"content.body","pattern":"ex*ple"}`, body("An example event."), nil, true},
		{"body glob whole body", `{"kind":"event_match","key":"content.body","pattern":"ex*ple"}`, body("exple"), nil, true},
		{"body glob spans words, - separates", `{"kind":"event_match","key":"content.body","pattern":"ex*ple"}`, body("An exciting triple-whammy"), nil, true},
		{"body glob not inside a word", `{"kind":"event_match","key":"content.body","pattern":"ex*ple"}`, body("texample"), nil, false},
		{"body literal word", `{"kind":"event_match","key":"content.body","pattern":"cake"}`, body("I like CAKE!"), nil, true},
		{"body literal not inside word", `{"kind":"event_match","key":"content.body","pattern":"cake"}`, body("cupcakes"), nil, false},
		// event_property_is: exact, no casts (spec example m.federate).
		{"is true", `{"kind":"event_property_is","key":"content.m\\.federate","value":true}`, createEvent, nil, true},
		{"is does not cast string", `{"kind":"event_property_is","key":"content.m\\.federate","value":"true"}`, createEvent, nil, false},
		{"is does not cast number", `{"kind":"event_property_is","key":"content.m\\.federate","value":1}`, createEvent, nil, false},
		{"is integer", `{"kind":"event_property_is","key":"content.count","value":5}`, createEvent, nil, true},
		{"is integer other", `{"kind":"event_property_is","key":"content.count","value":6}`, createEvent, nil, false},
		{"is null", `{"kind":"event_property_is","key":"content.nothing","value":null}`, createEvent, nil, true},
		{"is null needs presence", `{"kind":"event_property_is","key":"content.absent","value":null}`, createEvent, nil, false},
		{"is out-of-range integer never matches", `{"kind":"event_property_is","key":"content.big","value":9007199254740993}`, createEvent, nil, false},
		{"is string", `{"kind":"event_property_is","key":"content.room_version","value":"1"}`, createEvent, nil, true},
		{"escaped backslash in key", `{"kind":"event_property_is","key":"content.m\\\\foo","value":"bs"}`, createEvent, nil, true},
		{"is compound value never matches", `{"kind":"event_property_is","key":"content.alt_aliases","value":["a"]}`, aliasEvent, nil, false},
		{"dotted path through m.relates_to", `{"kind":"event_property_is","key":"content.m\\.relates_to.rel_type","value":"m.replace"}`, body("x"), nil, true},
		{"unescaped dot does not reach m.relates_to", `{"kind":"event_property_is","key":"content.m.relates_to.rel_type","value":"m.replace"}`, body("x"), nil, false},
		// event_property_contains (spec example alt_aliases).
		{"contains", `{"kind":"event_property_contains","key":"content.alt_aliases","value":"#myroom:example.com"}`, aliasEvent, nil, true},
		{"contains no partial", `{"kind":"event_property_contains","key":"content.alt_aliases","value":":example.com"}`, aliasEvent, nil, false},
		{"contains integer", `{"kind":"event_property_contains","key":"content.alt_aliases","value":7}`, aliasEvent, nil, true},
		{"contains bool", `{"kind":"event_property_contains","key":"content.alt_aliases","value":true}`, aliasEvent, nil, true},
		{"contains on non-array", `{"kind":"event_property_contains","key":"content.alias","value":"#somewhere:localhost"}`, aliasEvent, nil, false},
		{"mentions user", `{"kind":"event_property_contains","key":"content.m\\.mentions.user_ids","value":"@bob:x"}`, body("hi"), nil, true},
		{"mentions other user", `{"kind":"event_property_contains","key":"content.m\\.mentions.user_ids","value":"@carol:x"}`, body("hi"), nil, false},
		// contains_display_name.
		{"display name in body", `{"kind":"contains_display_name"}`, body("hey Bob Smith, lunch?"), func(c *evalContext) { c.displayName = "bob smith" }, true},
		{"display name inside a word", `{"kind":"contains_display_name"}`, body("Bobsmith"), func(c *evalContext) { c.displayName = "bob" }, false},
		{"no display name", `{"kind":"contains_display_name"}`, body("hey"), nil, false},
		// room_member_count.
		{"member count default ==", `{"kind":"room_member_count","is":"2"}`, topicEvent, func(c *evalContext) { c.memberCount = 2 }, true},
		{"member count == other", `{"kind":"room_member_count","is":"==2"}`, topicEvent, func(c *evalContext) { c.memberCount = 3 }, false},
		{"member count <", `{"kind":"room_member_count","is":"<10"}`, topicEvent, func(c *evalContext) { c.memberCount = 9 }, true},
		{"member count <=", `{"kind":"room_member_count","is":"<=10"}`, topicEvent, func(c *evalContext) { c.memberCount = 11 }, false},
		{"member count >", `{"kind":"room_member_count","is":">1"}`, topicEvent, func(c *evalContext) { c.memberCount = 2 }, true},
		{"member count >=", `{"kind":"room_member_count","is":">=3"}`, topicEvent, func(c *evalContext) { c.memberCount = 2 }, false},
		{"member count garbage", `{"kind":"room_member_count","is":"lots"}`, topicEvent, func(c *evalContext) { c.memberCount = 2 }, false},
		// sender_notification_permission.
		{"sender has room power", `{"kind":"sender_notification_permission","key":"room"}`, topicEvent,
			func(c *evalContext) { c.senderPower = 50; c.notificationPower = func(string) int64 { return 50 } }, true},
		{"sender lacks room power", `{"kind":"sender_notification_permission","key":"room"}`, topicEvent,
			func(c *evalContext) { c.senderPower = 0; c.notificationPower = func(string) int64 { return 50 } }, false},
		// Unknown and malformed conditions never match.
		{"unknown kind", `{"kind":"org.example.always"}`, topicEvent, nil, false},
		{"event_match without pattern", `{"kind":"event_match","key":"type"}`, topicEvent, nil, false},
		{"not an object", `"event_match"`, topicEvent, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			flat, err := flatten([]byte(tt.event))
			if err != nil {
				t.Fatal(err)
			}
			ec := &evalContext{event: flat}
			if tt.ctx != nil {
				tt.ctx(ec)
			}
			if got := compileCondition(json.RawMessage(tt.condition))(ec); got != tt.want {
				t.Errorf("%s on %s = %v, want %v", tt.condition, tt.event, got, tt.want)
			}
		})
	}
}

// TestDefaultRulesEvaluation runs the spec's default rules over typical
// events for @bob:x.
func TestDefaultRulesEvaluation(t *testing.T) {
	rules := compile((&userRules{}).render("@bob:x"))
	tests := []struct {
		name        string
		event       string
		members     int
		senderPower int64
		wantRule    string
		notify      bool
		highlight   bool
	}{
		{"plain message in a group", `{"type":"m.room.message","sender":"@a:x","room_id":"!r:x","content":{"msgtype":"m.text","body":"hi"}}`,
			5, 0, ".m.rule.message", true, false},
		{"plain message one to one", `{"type":"m.room.message","sender":"@a:x","room_id":"!r:x","content":{"msgtype":"m.text","body":"hi"}}`,
			2, 0, ".m.rule.room_one_to_one", true, false},
		{"user mention", `{"type":"m.room.message","sender":"@a:x","room_id":"!r:x","content":{"body":"bob!","m.mentions":{"user_ids":["@bob:x"]}}}`,
			5, 0, ".m.rule.is_user_mention", true, true},
		{"room mention by powerful sender", `{"type":"m.room.message","sender":"@a:x","room_id":"!r:x","content":{"body":"all","m.mentions":{"room":true}}}`,
			5, 100, ".m.rule.is_room_mention", true, true},
		{"room mention by powerless sender", `{"type":"m.room.message","sender":"@a:x","room_id":"!r:x","content":{"body":"all","m.mentions":{"room":true}}}`,
			5, 0, ".m.rule.message", true, false},
		{"notice", `{"type":"m.room.message","sender":"@a:x","room_id":"!r:x","content":{"msgtype":"m.notice","body":"bot"}}`,
			5, 0, ".m.rule.suppress_notices", false, false},
		{"encrypted in a group", `{"type":"m.room.encrypted","sender":"@a:x","room_id":"!r:x","content":{"algorithm":"m.megolm.v1.aes-sha2"}}`,
			5, 0, ".m.rule.encrypted", true, false},
		{"encrypted one to one", `{"type":"m.room.encrypted","sender":"@a:x","room_id":"!r:x","content":{"algorithm":"m.megolm.v1.aes-sha2"}}`,
			2, 0, ".m.rule.encrypted_room_one_to_one", true, false},
		{"invite for me", `{"type":"m.room.member","state_key":"@bob:x","sender":"@a:x","room_id":"!r:x","content":{"membership":"invite"}}`,
			5, 0, ".m.rule.invite_for_me", true, false},
		{"someone else's join", `{"type":"m.room.member","state_key":"@c:x","sender":"@c:x","room_id":"!r:x","content":{"membership":"join"}}`,
			5, 0, ".m.rule.member_event", false, false},
		{"edit", `{"type":"m.room.message","sender":"@a:x","room_id":"!r:x","content":{"body":"* hi","m.relates_to":{"rel_type":"m.replace","event_id":"$e"}}}`,
			5, 0, ".m.rule.suppress_edits", false, false},
		{"reaction", `{"type":"m.reaction","sender":"@a:x","room_id":"!r:x","content":{"m.relates_to":{"rel_type":"m.annotation","event_id":"$e","key":"👍"}}}`,
			5, 0, ".m.rule.reaction", false, false},
		{"tombstone", `{"type":"m.room.tombstone","state_key":"","sender":"@a:x","room_id":"!r:x","content":{"body":"moved","replacement_room":"!n:x"}}`,
			5, 100, ".m.rule.tombstone", true, true},
		{"call", `{"type":"m.call.invite","sender":"@a:x","room_id":"!r:x","content":{}}`,
			5, 0, ".m.rule.call", true, false},
		{"topic change matches nothing", `{"type":"m.room.topic","state_key":"","sender":"@a:x","room_id":"!r:x","content":{"topic":"t"}}`,
			5, 0, "", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			flat, err := flatten([]byte(tt.event))
			if err != nil {
				t.Fatal(err)
			}
			ec := &evalContext{event: flat, memberCount: tt.members, senderPower: tt.senderPower,
				notificationPower: func(string) int64 { return 50 }}
			r := rules.evaluate(ec)
			got := ""
			if r != nil {
				got = r.ruleID
			}
			if got != tt.wantRule {
				t.Fatalf("matched %q, want %q", got, tt.wantRule)
			}
			if r != nil && (r.outcome.notify != tt.notify || r.outcome.highlight != tt.highlight) {
				t.Errorf("outcome %+v, want notify=%v highlight=%v", r.outcome, tt.notify, tt.highlight)
			}
		})
	}
}

// TestRuleOrdering checks before/after placement and the errors the
// spec gives for a missing or server-default anchor.
func TestRuleOrdering(t *testing.T) {
	u := &userRules{}
	put := func(id, before, after string) error {
		p := id
		return u.putRule("content", Rule{RuleID: id, Pattern: &p, Actions: []json.RawMessage{actNotify}}, before, after)
	}
	ids := func() []string {
		var out []string
		for _, r := range u.Rules["content"] {
			out = append(out, r.RuleID)
		}
		return out
	}
	for _, step := range []struct {
		id, before, after string
		want              []string
	}{
		{"a", "", "", []string{"a"}},
		{"b", "", "", []string{"b", "a"}},       // new rules go first
		{"c", "", "b", []string{"b", "c", "a"}}, // after b
		{"d", "b", "", []string{"d", "b", "c", "a"}},
		{"a", "d", "", []string{"a", "d", "b", "c"}},       // moving an existing rule
		{"e", "c", "a", []string{"a", "d", "b", "e", "c"}}, // before wins over after
		{"b", "", "", []string{"a", "d", "b", "e", "c"}},   // update in place
	} {
		if err := put(step.id, step.before, step.after); err != nil {
			t.Fatalf("put %s: %v", step.id, err)
		}
		if got := ids(); !equal(got, step.want) {
			t.Fatalf("after putting %s (before=%q after=%q): %v, want %v", step.id, step.before, step.after, got, step.want)
		}
	}
	if err := put("f", "nope", ""); err == nil {
		t.Error("a missing before anchor was accepted")
	}
	if err := put("f", ".m.rule.contains_user_name", ""); err == nil {
		t.Error("a server-default anchor was accepted")
	}
	if got := ids(); !equal(got, []string{"a", "d", "b", "e", "c"}) {
		t.Errorf("a failed put changed the rules: %v", got)
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
