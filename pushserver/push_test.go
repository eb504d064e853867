package pushserver_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/myelin-chat/myelin/internal/testserver"
)

const rules = "/_matrix/client/v3/pushrules/global/"

// TestDefaultPushRules checks that a new user has exactly the spec
// v1.19 server-default rules (and MSC3930's poll rules), in order, and sees them as m.push_rules in
// an initial /sync.
func TestDefaultPushRules(t *testing.T) {
	testserver.ForEachEngine(t, pushConfig, func(t *testing.T, srv *testserver.Server) {
		bob := register(t, srv, "bob")
		all := bob.must(t, http.MethodGet, "/_matrix/client/v3/pushrules/", nil)
		ids := func(kind string) string {
			var out []string
			for _, r := range all.Get("global." + kind).Array() {
				out = append(out, r.Get("rule_id").Str)
			}
			return strings.Join(out, ",")
		}
		want := map[string]string{
			"override": ".m.rule.master,.m.rule.suppress_notices,.m.rule.invite_for_me,.m.rule.member_event," +
				".m.rule.is_user_mention,.m.rule.is_room_mention,.m.rule.tombstone,.m.rule.reaction," +
				".m.rule.room.server_acl,.m.rule.suppress_edits,.org.matrix.msc3930.rule.poll_response",
			"content":     "",
			"postcontent": "", // MSC4306's rules only with push.thread_subscription_rules
			"room":        "",
			"sender":      "",
			"underride": ".m.rule.call,.m.rule.encrypted_room_one_to_one,.m.rule.room_one_to_one,.m.rule.message,.m.rule.encrypted," +
				".org.matrix.msc3930.rule.poll_start_one_to_one,.org.matrix.msc3930.rule.poll_start," +
				".org.matrix.msc3930.rule.poll_end_one_to_one,.org.matrix.msc3930.rule.poll_end",
		}
		for kind, w := range want {
			if got := ids(kind); got != w {
				t.Errorf("%s rules: %s, want %s", kind, got, w)
			}
		}
		mention := bob.must(t, http.MethodGet, rules+"override/.m.rule.is_user_mention", nil)
		if mention.Get("conditions.0.value").Str != bob.id || mention.Get("conditions.0.key").Str != `content.m\.mentions.user_ids` ||
			!mention.Get("default").Bool() || !mention.Get("enabled").Bool() {
			t.Errorf("is_user_mention for bob: %s", mention.Raw)
		}
		if all.Get("global.override.0.enabled").Bool() {
			t.Error(".m.rule.master is enabled by default")
		}
		// The same ruleset is in an initial sync's account data.
		synced := bob.must(t, http.MethodGet, "/_matrix/client/v3/sync", nil)
		var found bool
		for _, ev := range synced.Get("account_data.events").Array() {
			if ev.Get("type").Str == "m.push_rules" {
				found = ev.Get("content.global.underride.3.rule_id").Str == ".m.rule.message"
			}
		}
		if !found {
			t.Errorf("initial sync lacks m.push_rules: %s", synced.Get("account_data").Raw)
		}
	})
}

// TestPushRulesCRUD exercises PUT/GET/DELETE, enabled, actions and
// before/after, the spec's errors, and the m.push_rules account data an
// incremental sync carries after a change.
func TestPushRulesCRUD(t *testing.T) {
	testserver.ForEachEngine(t, pushConfig, func(t *testing.T, srv *testserver.Server) {
		bob := register(t, srv, "bob")
		first := bob.must(t, http.MethodGet, "/_matrix/client/v3/sync", nil)
		since := first.Get("next_batch").Str

		put := func(id, query string, body any) (int, string) {
			status, res := bob.call(t, http.MethodPut, rules+"content/"+id+query, body)
			return status, res.Get("errcode").Str
		}
		cake := map[string]any{"pattern": "cake", "actions": []any{"notify", map[string]any{"set_tweak": "sound", "value": "cakealarm.wav"}}}
		for _, step := range []struct{ id, query string }{{"cake", ""}, {"pie", ""}, {"tea", "?after=pie"}, {"jam", "?before=pie"}} {
			if status, code := put(step.id, step.query, cake); status != http.StatusOK {
				t.Fatalf("PUT %s%s: %d %s", step.id, step.query, status, code)
			}
		}
		var order []string
		for _, r := range bob.must(t, http.MethodGet, "/_matrix/client/v3/pushrules/global/", nil).Get("content").Array() {
			order = append(order, r.Get("rule_id").Str)
		}
		if got := strings.Join(order, ","); got != "jam,pie,tea,cake" {
			t.Fatalf("content rule order %s, want jam,pie,tea,cake", got)
		}
		got := bob.must(t, http.MethodGet, rules+"content/cake", nil)
		if got.Get("pattern").Str != "cake" || got.Get("actions.1.value").Str != "cakealarm.wav" || !got.Get("enabled").Bool() || got.Get("default").Bool() {
			t.Errorf("GET cake: %s", got.Raw)
		}

		// Errors.
		for _, tc := range []struct {
			name, method, path string
			body               any
			status             int
			errcode            string
		}{
			{"reserved rule ID", http.MethodPut, rules + "content/.mine", cake, 400, ""},
			{"slash in rule ID", http.MethodPut, rules + "content/a%2Fb", cake, 400, ""},
			{"missing actions", http.MethodPut, rules + "content/x", map[string]any{"pattern": "x"}, 400, "M_MISSING_PARAM"},
			{"content rule without pattern", http.MethodPut, rules + "content/x", map[string]any{"actions": []any{}}, 400, "M_MISSING_PARAM"},
			{"unknown before", http.MethodPut, rules + "content/x?before=nope", cake, 400, "M_UNKNOWN"},
			{"unknown action", http.MethodPut, rules + "content/x", map[string]any{"pattern": "x", "actions": []any{"explode"}}, 400, "M_BAD_JSON"},
			{"unknown kind", http.MethodGet, "/_matrix/client/v3/pushrules/global/weird/x", nil, 400, "M_INVALID_PARAM"},
			{"missing rule", http.MethodGet, rules + "content/nope", nil, 404, "M_NOT_FOUND"},
			{"delete missing rule", http.MethodDelete, rules + "content/nope", nil, 404, "M_NOT_FOUND"},
			{"enabled of missing rule", http.MethodPut, rules + "override/nope/enabled", map[string]any{"enabled": false}, 404, "M_NOT_FOUND"},
			{"enabled without value", http.MethodPut, rules + "content/cake/enabled", map[string]any{}, 400, "M_MISSING_PARAM"},
		} {
			status, res := bob.call(t, tc.method, tc.path, tc.body)
			if status != tc.status || (tc.errcode != "" && res.Get("errcode").Str != tc.errcode) {
				t.Errorf("%s: %d %s, want %d %s", tc.name, status, res.Raw, tc.status, tc.errcode)
			}
		}

		// enabled and actions, on a user rule and on a server default.
		bob.must(t, http.MethodPut, rules+"content/cake/enabled", map[string]any{"enabled": false})
		if bob.must(t, http.MethodGet, rules+"content/cake/enabled", nil).Get("enabled").Bool() {
			t.Error("cake still enabled")
		}
		bob.must(t, http.MethodPut, rules+"override/.m.rule.master/enabled", map[string]any{"enabled": true})
		if !bob.must(t, http.MethodGet, rules+"override/.m.rule.master/enabled", nil).Get("enabled").Bool() {
			t.Error(".m.rule.master not enabled")
		}
		bob.must(t, http.MethodPut, rules+"underride/.m.rule.message/actions", map[string]any{"actions": []any{"notify", map[string]any{"set_tweak": "highlight"}}})
		if a := bob.must(t, http.MethodGet, rules+"underride/.m.rule.message/actions", nil).Get("actions"); a.Get("1.set_tweak").Str != "highlight" {
			t.Errorf("actions of .m.rule.message: %s", a.Raw)
		}
		bob.must(t, http.MethodDelete, rules+"content/pie", nil)
		if status, _ := bob.call(t, http.MethodGet, rules+"content/pie", nil); status != http.StatusNotFound {
			t.Errorf("deleted rule answers %d", status)
		}
		if status, _ := bob.call(t, http.MethodDelete, rules+"override/.m.rule.master", nil); status != http.StatusBadRequest {
			t.Errorf("deleting a server default answers %d", status)
		}

		// An incremental sync carries the new ruleset.
		next := bob.must(t, http.MethodGet, "/_matrix/client/v3/sync?since="+since, nil)
		var content string
		for _, ev := range next.Get("account_data.events").Array() {
			if ev.Get("type").Str == "m.push_rules" {
				content = ev.Get("content").Raw
			}
		}
		if !strings.Contains(content, `"rule_id":"jam"`) || strings.Contains(content, `"rule_id":"pie"`) ||
			!strings.Contains(content, `"actions":["notify",{"set_tweak":"highlight"}]`) {
			t.Errorf("incremental sync m.push_rules: %s", content)
		}
		// The account data API still refuses to set it.
		if status, _ := bob.call(t, http.MethodPut, "/_matrix/client/v3/user/"+esc(bob.id)+"/account_data/m.push_rules", map[string]any{}); status != http.StatusMethodNotAllowed {
			t.Errorf("setting m.push_rules as account data answered %d", status)
		}
	})
}
