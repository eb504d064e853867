package clientapi

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/storage"
)

// The m.login.sso stage of user-interactive authentication: a user who
// signs in through a provider confirms operations (deleting devices,
// uploading cross-signing keys, …) by signing in there again.
//
// Spec: client-server-api, "SSO during User-Interactive Authentication"
// and "Fallback". The client opens /auth/m.login.sso/fallback/web?session=
// in a browser; Myelin sends it to the provider the account is linked to
// (a page to choose when there are several); the callback checks that the
// provider's subject is this session's user, then a page names the
// operation and asks the user to confirm (the spec's "confirming the
// operation": the provider may sign the user in without asking, and a
// stolen access token must not be able to pass the stage by getting the
// user's browser sent through); the confirmation marks the stage
// completed in the session, and the completion page tells the client,
// which retries with the session only.

// withSSOStage adds the m.login.sso flow to a password-only spec for a
// user linked to a configured provider; a user without a password gets
// only that flow (they could not pass the password stage).
func (s *Server) withSSOStage(ctx context.Context, spec uiaSpec) (uiaSpec, error) {
	if len(s.sso.providers) == 0 || spec.localpart == "" || len(spec.flows) != 1 || !slices.Equal(spec.flows[0], []string{stagePassword}) {
		return spec, nil
	}
	idps, err := s.linkedProviders(ctx, s.db.Reader(), spec.localpart)
	if err != nil || len(idps) == 0 {
		return spec, err
	}
	acct, _, err := lookupAccount(ctx, s.db.Reader(), spec.localpart)
	if err != nil {
		return spec, err
	}
	if acct.passwordHash == "" {
		spec.flows = [][]string{{stageSSO}}
	} else {
		spec.flows = [][]string{{stagePassword}, {stageSSO}}
	}
	return spec, nil
}

// linkedProviders lists the configured providers localpart signs in with.
func (s *Server) linkedProviders(ctx context.Context, q storage.Querier, localpart string) ([]*oidcProvider, error) {
	rows, err := q.Query(ctx, `SELECT idp_id FROM sso_users WHERE localpart = $1 ORDER BY idp_id`, localpart)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*oidcProvider
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		if p := s.sso.byID[id]; p != nil {
			out = append(out, p)
		}
	}
	return out, rows.Err()
}

// ssoUIARoutes registers the fallback page of the m.login.sso stage.
func (s *Server) ssoUIARoutes(r chi.Router) {
	r.Method(http.MethodGet, "/_matrix/client/v3/auth/m.login.sso/fallback/web", http.HandlerFunc(s.ssoUIAFallback))
}

// ssoUIAFallback answers GET /auth/m.login.sso/fallback/web?session=:
// the browser goes to the provider the session's user is linked to
// (?idp= picks one when there are several, from the page shown then).
func (s *Server) ssoUIAFallback(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	id := r.URL.Query().Get("session")
	sess, ok, err := loadUIASession(ctx, s.db.Reader(), id)
	if err != nil {
		s.ssoInternalError(w, r, err)
		return
	}
	if id == "" || !ok || sess.localpart == "" || time.Since(time.UnixMilli(sess.createdTS)) > uiaSessionLifetime {
		s.ssoErrorPage(w, http.StatusBadRequest, "This request is unknown or has expired. Try again from your Matrix client.")
		return
	}
	idps, err := s.linkedProviders(ctx, s.db.Reader(), sess.localpart)
	if err != nil {
		s.ssoInternalError(w, r, err)
		return
	}
	if len(idps) == 0 {
		s.ssoErrorPage(w, http.StatusForbidden, "Your account does not sign in through an identity provider of this server.")
		return
	}
	p := idps[0]
	if len(idps) > 1 {
		p = nil
		for _, candidate := range idps {
			if candidate.cfg.ID == r.URL.Query().Get("idp") {
				p = candidate
			}
		}
		if p == nil {
			var choices []ssoChoice
			for _, c := range idps {
				choices = append(choices, ssoChoice{c.cfg.Name, r.URL.Path + "?" + url.Values{"session": {id}, "idp": {c.cfg.ID}}.Encode()})
			}
			s.renderPage(w, http.StatusOK, chooserPage(s.serverName, choices))
			return
		}
	}
	if err := s.startSSOFlow(w, r, p, "", id); err != nil {
		s.ssoInternalError(w, r, err)
	}
}

// ssoUIACallback ends the provider's part of an m.login.sso stage: the
// subject must be the session's user; the user is then asked to confirm
// the operation.
func (s *Server) ssoUIACallback(w http.ResponseWriter, r *http.Request, p *oidcProvider, claims map[string]any, browser []byte, uiaSession string) {
	ctx := r.Context()
	var localpart string
	err := s.db.Reader().QueryRow(ctx, `SELECT localpart FROM sso_users WHERE idp_id = $1 AND subject = $2`,
		p.cfg.ID, claims["sub"].(string)).Scan(&localpart)
	if err != nil && !storage.IsNoRows(err) {
		s.ssoInternalError(w, r, err)
		return
	}
	sess, ok, err := loadUIASession(ctx, s.db.Reader(), uiaSession)
	if err != nil {
		s.ssoInternalError(w, r, err)
		return
	}
	if !ok || time.Since(time.UnixMilli(sess.createdTS)) > uiaSessionLifetime {
		s.ssoErrorPage(w, http.StatusBadRequest, "The client's request has expired or was already done. Try again from your Matrix client.")
		return
	}
	if localpart == "" || localpart != sess.localpart {
		s.ssoErrorPage(w, http.StatusForbidden, "You signed in at "+p.cfg.Name+" as someone else than the user this request is for.")
		return
	}
	confirm := newToken("")
	err = s.db.Write(ctx, func(tx storage.Tx) error {
		_, err := tx.Exec(ctx, `
			INSERT INTO sso_confirmations (confirm_hash, browser_hash, localpart, redirect_url, uia_session, expires_ts)
			VALUES ($1, $2, $3, '', $4, $5)`,
			hashToken(confirm), browser, localpart, uiaSession,
			time.Now().Add(s.cfg.ClientAPI.SSO.FlowLifetime.D()).UnixMilli())
		return err
	})
	if err != nil {
		s.ssoInternalError(w, r, err)
		return
	}
	s.renderPage(w, http.StatusOK, uiaConfirmPage(s.userID(localpart), uiaOperation(sess.purpose), ssoConfirmPath, confirm))
}

// completeSSOStage marks m.login.sso completed in the UIA session of
// localpart; done is false when the session is gone.
func completeSSOStage(ctx context.Context, tx storage.Tx, sessionID, localpart string) (done bool, err error) {
	var completedJSON string
	var created int64
	err = tx.QueryRow(ctx, `SELECT completed, created_ts FROM uia_sessions WHERE session_id = $1 AND localpart = $2`,
		sessionID, localpart).Scan(&completedJSON, &created)
	if storage.IsNoRows(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if time.Since(time.UnixMilli(created)) > uiaSessionLifetime {
		return false, nil
	}
	var completed []string
	if err := json.Unmarshal([]byte(completedJSON), &completed); err != nil {
		return false, err
	}
	if !slices.Contains(completed, stageSSO) {
		completed = append(completed, stageSSO)
	}
	encoded, _ := json.Marshal(completed)
	_, err = tx.Exec(ctx, `UPDATE uia_sessions SET completed = $1 WHERE session_id = $2`, string(encoded), sessionID)
	return err == nil, err
}

// uiaOperation names a UIA purpose for the confirmation page.
func uiaOperation(purpose string) string {
	switch purpose {
	case "delete_devices":
		return "sign devices out of your account (delete them)"
	case "password":
		return "change your account's password"
	case "deactivate":
		return "deactivate your account, for good"
	case "login_token":
		return "sign another device in to your account"
	case "device_signing_upload":
		return "replace your account's cross-signing keys"
	}
	return "do something that needs you to confirm who you are (" + purpose + ")"
}

// uiaDoneScript is the completion script the spec prescribes for
// fallback pages ("Fallback"); the pages' Content-Security-Policy
// allows it by its hash and no other script.
const uiaDoneScript = `
if (window.onAuthDone) {
    window.onAuthDone();
} else if (window.opener && window.opener.postMessage) {
    window.opener.postMessage("authDone", "*");
}
`

var uiaDoneScriptHash = func() string {
	sum := sha256.Sum256([]byte(uiaDoneScript))
	return "sha256-" + base64.StdEncoding.EncodeToString(sum[:])
}()
