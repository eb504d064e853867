package pushserver

import (
	"encoding/json"
	"slices"
	"strings"

	"github.com/myelin-chat/myelin/internal/mxerr"
)

// Rule is one push rule in the spec's PushRule shape.
// Spec: client-server-api, "Push Rules"; data/api/client-server/definitions/push_rule.yaml.
type Rule struct {
	RuleID  string `json:"rule_id"`
	Default bool   `json:"default"`
	Enabled bool   `json:"enabled"`
	// Conditions are kept as the client sent them (unknown kinds
	// included: they never match, but the client gets them back). Only
	// override and underride rules have them.
	Conditions []json.RawMessage `json:"conditions,omitempty"`
	// Pattern is the glob of a content rule.
	Pattern *string           `json:"pattern,omitempty"`
	Actions []json.RawMessage `json:"actions"`
}

// The rule kinds, in the order they are checked. postcontent is
// MSC4306's kind between content and room, holding general rules (with
// conditions) such as the thread subscription rules.
// Spec: client-server-api, "Push Rules"; MSC4306, "New Push Rules".
var kinds = []string{"override", "content", "postcontent", "room", "sender", "underride"}

// hasConditions reports whether rules of kind carry conditions.
func hasConditions(kind string) bool {
	return kind == "override" || kind == "underride" || kind == "postcontent"
}

func validKind(kind string) bool { return slices.Contains(kinds, kind) }

// Ruleset is the global ruleset: rules by kind, most important first.
type Ruleset map[string][]Rule

// MarshalJSON writes every kind, with [] for an empty one, and gives
// override, postcontent and underride rules a conditions array even
// when empty.
func (rs Ruleset) MarshalJSON() ([]byte, error) {
	out := make(map[string]any, len(kinds))
	for _, kind := range kinds {
		rules := rs[kind]
		if rules == nil {
			rules = []Rule{}
		}
		if hasConditions(kind) {
			wire := make([]ruleWithConditions, len(rules))
			for i, r := range rules {
				wire[i] = ruleWithConditions{r}
			}
			out[kind] = wire
			continue
		}
		out[kind] = rules
	}
	return json.Marshal(out)
}

// ruleWithConditions marshals a rule with "conditions": [] when it has none.
type ruleWithConditions struct{ Rule }

func (r ruleWithConditions) MarshalJSON() ([]byte, error) {
	type plain Rule
	conds := r.Conditions
	if conds == nil {
		conds = []json.RawMessage{}
	}
	return json.Marshal(struct {
		plain
		Conditions []json.RawMessage `json:"conditions"`
	}{plain(r.Rule), conds})
}

// find returns the rule with ruleID in kind, or nil.
func (rs Ruleset) find(kind, ruleID string) *Rule {
	for i := range rs[kind] {
		if rs[kind][i].RuleID == ruleID {
			return &rs[kind][i]
		}
	}
	return nil
}

// raw is a JSON literal, for the default rules below.
func raw(s string) json.RawMessage { return json.RawMessage(s) }

func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

var (
	actNotify       = raw(`"notify"`)
	actSoundDefault = raw(`{"set_tweak":"sound","value":"default"}`)
	actHighlight    = raw(`{"set_tweak":"highlight"}`)
)

// defaultRules returns the server-default rules for userID, copied from
// the spec text of v1.19 ("Predefined Rules"). v1.17 removed the legacy
// body-matching rules (.m.rule.contains_display_name, .m.rule.roomnotif,
// .m.rule.contains_user_name), so there are no default content rules.
// .m.rule.master is listed here first but is placed above every user
// rule by render.
//
// With threadRules, MSC4306's two postcontent rules are added: events in
// a thread the user is not subscribed to do not notify (unless an
// override rule such as a mention matched first), events in a
// subscribed thread always do. They are off by default because a client
// that does not subscribe to threads would never be notified of thread
// messages (config push.thread_subscription_rules).
//
// MSC3930's poll rules are included: poll responses never notify, a poll
// start or end notifies like a message (with sound in a one-to-one
// room). Spec: MSC3930, "Push rules".
func defaultRules(userID string, threadRules bool) Ruleset {
	me := quote(userID)
	d := func(id string, conds []json.RawMessage, actions ...json.RawMessage) Rule {
		if actions == nil {
			actions = []json.RawMessage{}
		}
		if conds == nil {
			conds = []json.RawMessage{}
		}
		return Rule{RuleID: id, Default: true, Enabled: true, Conditions: conds, Actions: actions}
	}
	c := func(conds ...string) []json.RawMessage {
		out := make([]json.RawMessage, len(conds))
		for i, s := range conds {
			out[i] = raw(s)
		}
		return out
	}
	master := d(".m.rule.master", nil)
	master.Enabled = false
	var postcontent []Rule
	if threadRules {
		// Spec: MSC4306, "New Push Rules" and "Unstable prefix".
		postcontent = []Rule{
			d(".io.element.msc4306.rule.unsubscribed_thread",
				c(`{"kind":"io.element.msc4306.thread_subscription","subscribed":false}`)),
			d(".io.element.msc4306.rule.subscribed_thread",
				c(`{"kind":"io.element.msc4306.thread_subscription","subscribed":true}`),
				actNotify, actSoundDefault),
		}
	}
	return Ruleset{
		"postcontent": postcontent,
		"override": {
			master,
			d(".m.rule.suppress_notices", c(`{"kind":"event_match","key":"content.msgtype","pattern":"m.notice"}`)),
			d(".m.rule.invite_for_me", c(
				`{"key":"type","kind":"event_match","pattern":"m.room.member"}`,
				`{"key":"content.membership","kind":"event_match","pattern":"invite"}`,
				`{"key":"state_key","kind":"event_match","pattern":`+me+`}`),
				actNotify, actSoundDefault),
			d(".m.rule.member_event", c(`{"key":"type","kind":"event_match","pattern":"m.room.member"}`)),
			d(".m.rule.is_user_mention", c(`{"kind":"event_property_contains","key":"content.m\\.mentions.user_ids","value":`+me+`}`),
				actNotify, actSoundDefault, actHighlight),
			d(".m.rule.is_room_mention", c(
				`{"kind":"event_property_is","key":"content.m\\.mentions.room","value":true}`,
				`{"kind":"sender_notification_permission","key":"room"}`),
				actNotify, actHighlight),
			d(".m.rule.tombstone", c(
				`{"kind":"event_match","key":"type","pattern":"m.room.tombstone"}`,
				`{"kind":"event_match","key":"state_key","pattern":""}`),
				actNotify, actHighlight),
			d(".m.rule.reaction", c(`{"kind":"event_match","key":"type","pattern":"m.reaction"}`)),
			d(".m.rule.room.server_acl", c(
				`{"kind":"event_match","key":"type","pattern":"m.room.server_acl"}`,
				`{"kind":"event_match","key":"state_key","pattern":""}`)),
			d(".m.rule.suppress_edits", c(`{"kind":"event_property_is","key":"content.m\\.relates_to.rel_type","value":"m.replace"}`)),
			d(".org.matrix.msc3930.rule.poll_response", c(`{"kind":"event_match","key":"type","pattern":"org.matrix.msc3381.poll.response"}`)),
		},
		"underride": {
			d(".m.rule.call", c(`{"key":"type","kind":"event_match","pattern":"m.call.invite"}`),
				actNotify, raw(`{"set_tweak":"sound","value":"ring"}`)),
			d(".m.rule.encrypted_room_one_to_one", c(
				`{"kind":"room_member_count","is":"2"}`,
				`{"kind":"event_match","key":"type","pattern":"m.room.encrypted"}`),
				actNotify, actSoundDefault),
			d(".m.rule.room_one_to_one", c(
				`{"kind":"room_member_count","is":"2"}`,
				`{"kind":"event_match","key":"type","pattern":"m.room.message"}`),
				actNotify, actSoundDefault),
			d(".m.rule.message", c(`{"kind":"event_match","key":"type","pattern":"m.room.message"}`), actNotify),
			d(".m.rule.encrypted", c(`{"kind":"event_match","key":"type","pattern":"m.room.encrypted"}`), actNotify),
			d(".org.matrix.msc3930.rule.poll_start_one_to_one", c(
				`{"kind":"room_member_count","is":"2"}`,
				`{"kind":"event_match","key":"type","pattern":"org.matrix.msc3381.poll.start"}`),
				actNotify, actSoundDefault),
			d(".org.matrix.msc3930.rule.poll_start", c(`{"kind":"event_match","key":"type","pattern":"org.matrix.msc3381.poll.start"}`), actNotify),
			d(".org.matrix.msc3930.rule.poll_end_one_to_one", c(
				`{"kind":"room_member_count","is":"2"}`,
				`{"kind":"event_match","key":"type","pattern":"org.matrix.msc3381.poll.end"}`),
				actNotify, actSoundDefault),
			d(".org.matrix.msc3930.rule.poll_end", c(`{"kind":"event_match","key":"type","pattern":"org.matrix.msc3381.poll.end"}`), actNotify),
		},
	}
}

// defaultChange is what a user changed about one server-default rule.
type defaultChange struct {
	Enabled *bool             `json:"enabled,omitempty"`
	Actions []json.RawMessage `json:"actions,omitempty"`
}

// userRules is what is stored per user: their own rules by kind (most
// important first) and their changes to server-default rules, keyed by
// "kind/rule_id". Server defaults are not stored, so a newer server's
// defaults reach every user.
type userRules struct {
	Rules    Ruleset                  `json:"rules,omitempty"`
	Defaults map[string]defaultChange `json:"defaults,omitempty"`
	// threadRules is the server's push.thread_subscription_rules: whether
	// the MSC4306 default rules exist. Not stored.
	threadRules bool
}

// render merges the server defaults for userID with u into the ruleset
// clients see: .m.rule.master first, then user override rules, then the
// other default overrides; user rules before default ones in every
// other kind. Spec: client-server-api, "Predefined Rules".
func (u *userRules) render(userID string) Ruleset {
	defaults := defaultRules(userID, u.threadRules)
	for kind, rules := range defaults {
		for i := range rules {
			if ch, ok := u.Defaults[kind+"/"+rules[i].RuleID]; ok {
				if ch.Enabled != nil {
					rules[i].Enabled = *ch.Enabled
				}
				if ch.Actions != nil {
					rules[i].Actions = ch.Actions
				}
			}
		}
	}
	out := Ruleset{}
	for _, kind := range kinds {
		var rules []Rule
		def := defaults[kind]
		if kind == "override" && len(def) > 0 && def[0].RuleID == ".m.rule.master" {
			rules = append(rules, def[0])
			def = def[1:]
		}
		rules = append(rules, u.Rules[kind]...)
		rules = append(rules, def...)
		if rules == nil {
			rules = []Rule{}
		}
		out[kind] = rules
	}
	return out
}

// Limits on one user's rules, so that evaluation stays fast and the
// m.push_rules account data stays small.
const (
	maxUserRules   = 500
	maxRuleBytes   = 8 << 10
	maxActions     = 16
	maxConditions  = 16
	maxRuleIDBytes = 255
)

// putRule adds or replaces a user rule of kind, placing it per
// before/after (spec: with both, before wins) or, when new and neither
// is given, first among the user's rules of its kind.
// Spec: client-server-api, "PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}".
func (u *userRules) putRule(kind string, rule Rule, before, after string) error {
	if u.Rules == nil {
		u.Rules = Ruleset{}
	}
	rules := u.Rules[kind]
	existing := slices.IndexFunc(rules, func(r Rule) bool { return r.RuleID == rule.RuleID })
	if existing >= 0 {
		rule.Enabled = rules[existing].Enabled
	} else {
		rule.Enabled = true
		total := 0
		for _, rs := range u.Rules {
			total += len(rs)
		}
		if total >= maxUserRules {
			return mxerr.New(mxerr.ResourceLimitExceeded, "too many push rules (at most %d)", maxUserRules).WithStatus(400)
		}
	}
	anchor, offset := before, 0
	if anchor == "" && after != "" {
		anchor, offset = after, 1
	}
	if anchor == "" {
		if existing >= 0 {
			rules[existing] = rule
		} else {
			rules = slices.Insert(rules, 0, rule)
		}
		u.Rules[kind] = rules
		return nil
	}
	if strings.HasPrefix(anchor, ".") {
		return mxerr.New(mxerr.Unknown, "before/after cannot name a server-default rule: %s", anchor).WithStatus(400)
	}
	if anchor == rule.RuleID {
		return mxerr.New(mxerr.Unknown, "before/after cannot name the rule itself: %s", anchor).WithStatus(400)
	}
	if existing >= 0 {
		rules = slices.Delete(rules, existing, existing+1)
	}
	at := slices.IndexFunc(rules, func(r Rule) bool { return r.RuleID == anchor })
	if at < 0 {
		return mxerr.New(mxerr.Unknown, "before/after rule not found: %s", anchor).WithStatus(400)
	}
	u.Rules[kind] = slices.Insert(rules, at+offset, rule)
	return nil
}

// deleteRule removes a user rule; false if there was none.
func (u *userRules) deleteRule(kind, ruleID string) bool {
	rules := u.Rules[kind]
	i := slices.IndexFunc(rules, func(r Rule) bool { return r.RuleID == ruleID })
	if i < 0 {
		return false
	}
	u.Rules[kind] = slices.Delete(rules, i, i+1)
	return true
}

// setEnabled and setActions change a user rule in place or record a
// change to a server-default one. They report whether the rule exists.
func (u *userRules) setEnabled(userID, kind, ruleID string, enabled bool) bool {
	return u.change(userID, kind, ruleID, func(r *Rule) { r.Enabled = enabled },
		func(c *defaultChange) { c.Enabled = &enabled })
}

func (u *userRules) setActions(userID, kind, ruleID string, actions []json.RawMessage) bool {
	return u.change(userID, kind, ruleID, func(r *Rule) { r.Actions = actions },
		func(c *defaultChange) { c.Actions = actions })
}

func (u *userRules) change(userID, kind, ruleID string, user func(*Rule), def func(*defaultChange)) bool {
	if strings.HasPrefix(ruleID, ".") {
		if defaultRules(userID, u.threadRules).find(kind, ruleID) == nil {
			return false
		}
		if u.Defaults == nil {
			u.Defaults = map[string]defaultChange{}
		}
		c := u.Defaults[kind+"/"+ruleID]
		def(&c)
		u.Defaults[kind+"/"+ruleID] = c
		return true
	}
	r := u.Rules.find(kind, ruleID)
	if r == nil {
		return false
	}
	user(r)
	return true
}
