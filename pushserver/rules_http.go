package pushserver

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
)

const v3 = "/_matrix/client/v3"

func (s *Server) ruleRoutes(r chi.Router) {
	for _, p := range []string{"/pushrules", "/pushrules/"} {
		r.Method(http.MethodGet, v3+p, httpx.H(s.getAllRules))
	}
	for _, p := range []string{"/pushrules/{scope}", "/pushrules/{scope}/"} {
		r.Method(http.MethodGet, v3+p, httpx.H(s.getScope))
	}
	const rule = v3 + "/pushrules/{scope}/{kind}/{ruleId}"
	r.Method(http.MethodGet, rule, httpx.H(s.getRule))
	r.Method(http.MethodPut, rule, httpx.H(s.putRule))
	r.Method(http.MethodDelete, rule, httpx.H(s.deleteRule))
	r.Method(http.MethodGet, rule+"/enabled", httpx.H(s.getRuleEnabled))
	r.Method(http.MethodPut, rule+"/enabled", httpx.H(s.putRuleEnabled))
	r.Method(http.MethodGet, rule+"/actions", httpx.H(s.getRuleActions))
	r.Method(http.MethodPut, rule+"/actions", httpx.H(s.putRuleActions))
}

func (s *Server) ruleset(r *http.Request) (Ruleset, error) {
	userID := authn.FromContext(r.Context()).UserID
	u, err := loadUserRules(r.Context(), s.db.Reader(), userID, s.cfg.ThreadSubscriptionRules)
	if err != nil {
		return nil, err
	}
	return u.render(userID), nil
}

// getAllRules answers GET /pushrules/.
// Spec: client-server-api, "GET /_matrix/client/v3/pushrules/".
func (s *Server) getAllRules(w http.ResponseWriter, r *http.Request) error {
	rs, err := s.ruleset(r)
	if err != nil {
		return err
	}
	return httpx.OK(w, map[string]Ruleset{"global": rs})
}

// getScope answers GET /pushrules/global/.
// Spec: client-server-api, "GET /_matrix/client/v3/pushrules/global/".
func (s *Server) getScope(w http.ResponseWriter, r *http.Request) error {
	if _, err := pathParam(r, "scope"); err != nil {
		return err
	}
	if err := checkScope(r); err != nil {
		return err
	}
	rs, err := s.ruleset(r)
	if err != nil {
		return err
	}
	return httpx.OK(w, rs)
}

func pathParam(r *http.Request, name string) (string, error) {
	v, err := url.PathUnescape(chi.URLParam(r, name))
	if err != nil {
		return "", mxerr.New(mxerr.InvalidParam, "path parameter %s is not correctly escaped", name)
	}
	return v, nil
}

// checkScope accepts only the global scope; device scopes were removed
// from the spec.
func checkScope(r *http.Request) error {
	scope, err := pathParam(r, "scope")
	if err != nil {
		return err
	}
	if scope != "global" {
		return mxerr.New(mxerr.InvalidParam, "unknown push rule scope %q: only global exists", scope)
	}
	return nil
}

// ruleTarget reads and checks {scope}/{kind}/{ruleId}.
func ruleTarget(r *http.Request) (kind, ruleID string, err error) {
	if err := checkScope(r); err != nil {
		return "", "", err
	}
	if kind, err = pathParam(r, "kind"); err != nil {
		return "", "", err
	}
	if !validKind(kind) {
		return "", "", mxerr.New(mxerr.InvalidParam, "unknown push rule kind %q", kind)
	}
	if ruleID, err = pathParam(r, "ruleId"); err != nil {
		return "", "", err
	}
	if ruleID == "" {
		return "", "", mxerr.New(mxerr.InvalidParam, "rule ID is empty")
	}
	return kind, ruleID, nil
}

// findRule looks a rule up in the caller's rendered ruleset.
func (s *Server) findRule(r *http.Request) (*Rule, error) {
	kind, ruleID, err := ruleTarget(r)
	if err != nil {
		return nil, err
	}
	rs, err := s.ruleset(r)
	if err != nil {
		return nil, err
	}
	rule := rs.find(kind, ruleID)
	if rule == nil {
		return nil, mxerr.New(mxerr.NotFound, "no push rule %s/%s", kind, ruleID)
	}
	return rule, nil
}

// getRule answers GET /pushrules/global/{kind}/{ruleId}.
func (s *Server) getRule(w http.ResponseWriter, r *http.Request) error {
	rule, err := s.findRule(r)
	if err != nil {
		return err
	}
	if kind, _ := pathParam(r, "kind"); hasConditions(kind) {
		return httpx.OK(w, ruleWithConditions{*rule})
	}
	return httpx.OK(w, rule)
}

func (s *Server) getRuleEnabled(w http.ResponseWriter, r *http.Request) error {
	rule, err := s.findRule(r)
	if err != nil {
		return err
	}
	return httpx.OK(w, map[string]bool{"enabled": rule.Enabled})
}

func (s *Server) getRuleActions(w http.ResponseWriter, r *http.Request) error {
	rule, err := s.findRule(r)
	if err != nil {
		return err
	}
	return httpx.OK(w, map[string]any{"actions": rule.Actions})
}

// putRule answers PUT /pushrules/global/{kind}/{ruleId}.
// Spec: client-server-api, "PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}".
func (s *Server) putRule(w http.ResponseWriter, r *http.Request) error {
	kind, ruleID, err := ruleTarget(r)
	if err != nil {
		return err
	}
	if strings.HasPrefix(ruleID, ".") {
		return mxerr.New(mxerr.InvalidParam, "rule IDs starting with . are reserved for server-default rules")
	}
	if strings.ContainsAny(ruleID, `/\`) || len(ruleID) > maxRuleIDBytes {
		return mxerr.New(mxerr.InvalidParam, "rule IDs cannot contain / or \\ and are at most %d bytes", maxRuleIDBytes)
	}
	switch {
	case kind == "room" && !strings.HasPrefix(ruleID, "!"):
		return mxerr.New(mxerr.InvalidParam, "a room rule's ID must be a room ID")
	case kind == "sender" && !strings.HasPrefix(ruleID, "@"):
		return mxerr.New(mxerr.InvalidParam, "a sender rule's ID must be a user ID")
	}
	body, err := httpx.ReadBody(r)
	if err != nil {
		return err
	}
	if len(body) > maxRuleBytes {
		return mxerr.New(mxerr.TooLarge, "a push rule is at most %d bytes", maxRuleBytes)
	}
	var req struct {
		Actions    *[]json.RawMessage `json:"actions"`
		Conditions *[]json.RawMessage `json:"conditions"`
		Pattern    *string            `json:"pattern"`
	}
	if err := httpx.Unmarshal(body, &req); err != nil {
		return err
	}
	if req.Actions == nil {
		return mxerr.New(mxerr.MissingParam, "actions is required")
	}
	actions, ok := validateActions(*req.Actions)
	if !ok {
		return mxerr.New(mxerr.BadJSON, "actions must be notify or set_tweak objects (at most %d)", maxActions)
	}
	rule := Rule{RuleID: ruleID, Actions: actions}
	switch kind {
	case "content":
		if req.Pattern == nil {
			return mxerr.New(mxerr.MissingParam, "a content rule needs a pattern")
		}
		rule.Pattern = req.Pattern
	case "override", "underride", "postcontent":
		conds := []json.RawMessage{}
		if req.Conditions != nil {
			conds = *req.Conditions
		}
		if len(conds) > maxConditions {
			return mxerr.New(mxerr.BadJSON, "a rule has at most %d conditions", maxConditions)
		}
		for _, c := range conds {
			var probe struct {
				Kind string `json:"kind"`
			}
			if json.Unmarshal(c, &probe) != nil || probe.Kind == "" {
				return mxerr.New(mxerr.BadJSON, "every condition is an object with a kind")
			}
		}
		rule.Conditions = conds
	}
	q := r.URL.Query()
	userID := authn.FromContext(r.Context()).UserID
	err = s.updateRules(r.Context(), userID, func(u *userRules) error {
		return u.putRule(kind, rule, q.Get("before"), q.Get("after"))
	})
	if err != nil {
		return err
	}
	return httpx.OK(w, httpx.EmptyObject)
}

// deleteRule answers DELETE /pushrules/global/{kind}/{ruleId}.
// Server-default rules cannot be deleted (only disabled).
func (s *Server) deleteRule(w http.ResponseWriter, r *http.Request) error {
	kind, ruleID, err := ruleTarget(r)
	if err != nil {
		return err
	}
	if strings.HasPrefix(ruleID, ".") {
		return mxerr.New(mxerr.InvalidParam, "server-default rules cannot be deleted; disable them instead")
	}
	return s.updateRule(w, r, kind, ruleID, func(u *userRules, userID string) bool {
		return u.deleteRule(kind, ruleID)
	})
}

// updateRule applies change to one of the caller's rules, kind/ruleID, and
// answers {}; M_NOT_FOUND if change reports that there is no such rule.
func (s *Server) updateRule(w http.ResponseWriter, r *http.Request, kind, ruleID string, change func(u *userRules, userID string) bool) error {
	userID := authn.FromContext(r.Context()).UserID
	err := s.updateRules(r.Context(), userID, func(u *userRules) error {
		if !change(u, userID) {
			return mxerr.New(mxerr.NotFound, "no push rule %s/%s", kind, ruleID)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return httpx.OK(w, httpx.EmptyObject)
}

// putRuleEnabled answers PUT .../enabled.
func (s *Server) putRuleEnabled(w http.ResponseWriter, r *http.Request) error {
	kind, ruleID, err := ruleTarget(r)
	if err != nil {
		return err
	}
	var req struct {
		Enabled *bool `json:"enabled"`
	}
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	if req.Enabled == nil {
		return mxerr.New(mxerr.MissingParam, "enabled is required")
	}
	return s.updateRule(w, r, kind, ruleID, func(u *userRules, userID string) bool {
		return u.setEnabled(userID, kind, ruleID, *req.Enabled)
	})
}

// putRuleActions answers PUT .../actions.
func (s *Server) putRuleActions(w http.ResponseWriter, r *http.Request) error {
	kind, ruleID, err := ruleTarget(r)
	if err != nil {
		return err
	}
	var req struct {
		Actions *[]json.RawMessage `json:"actions"`
	}
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	if req.Actions == nil {
		return mxerr.New(mxerr.MissingParam, "actions is required")
	}
	actions, ok := validateActions(*req.Actions)
	if !ok {
		return mxerr.New(mxerr.BadJSON, "actions must be notify or set_tweak objects (at most %d)", maxActions)
	}
	return s.updateRule(w, r, kind, ruleID, func(u *userRules, userID string) bool {
		return u.setActions(userID, kind, ruleID, actions)
	})
}
