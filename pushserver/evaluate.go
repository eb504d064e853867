package pushserver

import (
	"encoding/json"
	"strings"
)

// compiledRule is an enabled rule ready to test: its conditions compiled
// once, its actions decoded once.
type compiledRule struct {
	ruleID     string
	conditions []condition
	actions    []json.RawMessage
	outcome    outcome
}

// outcome is what a matching rule's actions mean for counting.
type outcome struct {
	notify    bool
	highlight bool
}

// compiledRules is a user's whole ruleset in evaluation order. It is
// immutable once built and shared between goroutines.
type compiledRules struct {
	rules []compiledRule
}

// compile builds the evaluation form of a rendered ruleset: kinds in
// spec order, disabled rules left out, room/sender/content rules given
// their implied condition.
func compile(rs Ruleset) *compiledRules {
	out := &compiledRules{}
	for _, kind := range kinds {
		for _, r := range rs[kind] {
			if !r.Enabled {
				continue
			}
			cr := compiledRule{ruleID: r.RuleID, actions: r.Actions, outcome: actionOutcome(r.Actions)}
			switch kind {
			case "override", "underride", "postcontent":
				for _, c := range r.Conditions {
					cr.conditions = append(cr.conditions, compileCondition(c))
				}
			case "room":
				roomID := r.RuleID
				cr.conditions = []condition{func(ec *evalContext) bool { return ec.event["room_id"] == roomID }}
			case "sender":
				sender := r.RuleID
				cr.conditions = []condition{func(ec *evalContext) bool { return ec.event["sender"] == sender }}
			case "content":
				if r.Pattern == nil {
					continue
				}
				match := compileGlob(*r.Pattern, true)
				cr.conditions = []condition{func(ec *evalContext) bool {
					body, ok := ec.event["content.body"].(string)
					return ok && match(body)
				}}
			}
			out.rules = append(out.rules, cr)
		}
	}
	return out
}

// evaluate returns the first matching rule, or nil when none matches.
// Spec: client-server-api, "Push Rules": only the highest priority
// matching rule's actions apply.
func (cr *compiledRules) evaluate(ec *evalContext) *compiledRule {
rules:
	for i := range cr.rules {
		r := &cr.rules[i]
		for _, c := range r.conditions {
			if !c(ec) {
				continue rules
			}
		}
		return r
	}
	return nil
}

// actionOutcome reads notify and the highlight tweak from actions.
// dont_notify and coalesce are historical and ignored. A highlight
// tweak without a value means true.
// Spec: client-server-api, "Actions", "Historical Actions".
func actionOutcome(actions []json.RawMessage) outcome {
	var o outcome
	for _, a := range actions {
		var name string
		if json.Unmarshal(a, &name) == nil {
			if name == "notify" {
				o.notify = true
			}
			continue
		}
		var tweak struct {
			SetTweak string           `json:"set_tweak"`
			Value    *json.RawMessage `json:"value"`
		}
		if json.Unmarshal(a, &tweak) == nil && tweak.SetTweak == "highlight" {
			o.highlight = tweak.Value == nil || strings.TrimSpace(string(*tweak.Value)) == "true"
		}
	}
	return o
}

// tweaks collects the set_tweak actions into the map a push gateway
// receives. Spec: push-gateway-api, "tweaks".
func tweaks(actions []json.RawMessage) map[string]any {
	out := map[string]any{}
	for _, a := range actions {
		var tweak struct {
			SetTweak string `json:"set_tweak"`
			Value    any    `json:"value"`
		}
		if a[0] != '{' || json.Unmarshal(a, &tweak) != nil || tweak.SetTweak == "" {
			continue
		}
		if tweak.Value == nil && tweak.SetTweak == "highlight" {
			tweak.Value = true
		}
		out[tweak.SetTweak] = tweak.Value
	}
	return out
}

// validateActions checks a client's actions. The historical dont_notify
// and coalesce are kept as the client sent them, so the client reads back
// what it wrote (Complement TestPushRuleCacheHealth), and evaluation
// ignores them (actionOutcome, tweaks): a rule with ["dont_notify"] acts
// like one with []. Spec: "Actions", "Historical Actions".
func validateActions(actions []json.RawMessage) ([]json.RawMessage, bool) {
	out := []json.RawMessage{}
	if len(actions) > maxActions {
		return nil, false
	}
	for _, a := range actions {
		var name string
		if json.Unmarshal(a, &name) == nil {
			switch name {
			case "notify":
				out = append(out, actNotify)
			case "dont_notify", "coalesce":
				out = append(out, a)
			default:
				return nil, false
			}
			continue
		}
		var tweak map[string]json.RawMessage
		if json.Unmarshal(a, &tweak) != nil {
			return nil, false
		}
		var key string
		if json.Unmarshal(tweak["set_tweak"], &key) != nil || key == "" {
			return nil, false
		}
		out = append(out, a)
	}
	return out, true
}
