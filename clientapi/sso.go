package clientapi

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// Single sign-on: m.login.sso with Myelin as the OpenID Connect relying
// party of the configured providers (client_api.sso).
//
// Spec: client-server-api, "SSO client login/authentication" and
// "Client login via SSO". The flow:
//
//  1. GET /login/sso/redirect[/{idpId}]?redirectUrl=… stores a flow row
//     (state, nonce, PKCE verifier, redirectUrl) bound to the browser's
//     cookie, and redirects to the provider's authorization endpoint.
//  2. The provider sends the browser back to ssoCallbackPath with a code
//     and the state. The flow row is taken (single use; only by the
//     browser that started it), the code exchanged, the ID token
//     verified, and the subject mapped to an account (created on a first
//     login when allowed). A confirmation row is written and a page asks
//     the user whether the client at redirectUrl's host may have the
//     login (security considerations: login tokens must not go to a
//     site the user did not mean).
//  3. The page's form posts to ssoConfirmPath: the confirmation row is
//     taken (single use, same browser), a login token is made, and the
//     browser is redirected to redirectUrl with loginToken added, which
//     the client exchanges at POST /login (m.login.token).
const (
	ssoCallbackPath = "/_myelin/client/oidc/callback"
	ssoConfirmPath  = "/_myelin/client/oidc/confirm"
	// ssoBrowserCookie names the browser across the flow's requests.
	ssoBrowserCookie = "myelin_sso_browser"
	// maxRedirectURL bounds redirectUrl, which is stored and echoed.
	maxRedirectURL = 2048
	loginTypeSSO   = "m.login.sso"
)

// ssoState is the SSO module of the server.
type ssoState struct {
	providers []*oidcProvider          // in configured order; immutable
	byID      map[string]*oidcProvider // immutable
}

// initSSO builds the providers from client_api.sso.
func (s *Server) initSSO() {
	s.sso.byID = map[string]*oidcProvider{}
	cfg := s.cfg.ClientAPI.SSO
	for _, pc := range cfg.Providers {
		p := newOIDCProvider(pc, cfg.DiscoveryCacheTTL.D())
		s.sso.providers = append(s.sso.providers, p)
		s.sso.byID[pc.ID] = p
	}
}

// ssoRoutes registers the SSO endpoints.
func (s *Server) ssoRoutes(r chi.Router) {
	const v3 = "/_matrix/client/v3"
	handle(r, http.MethodGet, v3+"/login/sso/redirect", s.ssoRedirect)
	handle(r, http.MethodGet, v3+"/login/sso/redirect/{idpId}", s.ssoRedirect)
	r.Method(http.MethodGet, ssoCallbackPath, http.HandlerFunc(s.ssoCallback))
	r.Method(http.MethodPost, ssoConfirmPath, http.HandlerFunc(s.ssoConfirm))
	s.ssoUIARoutes(r)
}

// ssoLoginFlow is the m.login.sso flow of GET /login; nil without
// providers. Spec: sso_login_flow.yaml.
func (s *Server) ssoLoginFlow() map[string]any {
	if len(s.sso.providers) == 0 {
		return nil
	}
	idps := make([]map[string]any, 0, len(s.sso.providers))
	for _, p := range s.sso.providers {
		idp := map[string]any{"id": p.cfg.ID, "name": p.cfg.Name}
		if p.cfg.Icon != "" {
			idp["icon"] = p.cfg.Icon
		}
		if p.cfg.Brand != "" {
			idp["brand"] = p.cfg.Brand
		}
		idps = append(idps, idp)
	}
	return map[string]any{"type": loginTypeSSO, "identity_providers": idps}
}

// ssoRedirect answers GET /login/sso/redirect and
// /login/sso/redirect/{idpId}.
//
// Spec: sso_login_redirect.yaml: redirectUrl is required (400
// M_MISSING_PARAM); action is login or register; an unknown idpId is
// 404. Without an idpId the only provider is used, or the user picks
// one on a page ("present a page which lets the user select an IdP").
func (s *Server) ssoRedirect(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	if !q.Has("redirectUrl") {
		return mxerr.New(mxerr.MissingParam, "redirectUrl is required")
	}
	redirectURL := q.Get("redirectUrl")
	if _, err := parseClientRedirect(redirectURL); err != nil {
		return err
	}
	// Spec v1.18: action says whether the user means to log in or to
	// register; both end the same way here (a first login registers).
	switch q.Get("action") {
	case "", "login", "register":
	default:
		return mxerr.New(mxerr.InvalidParam, "action must be login or register")
	}
	if len(s.sso.providers) == 0 {
		return mxerr.New(mxerr.NotFound, "single sign-on is not configured on this server")
	}
	idpID := chi.URLParam(r, "idpId")
	var p *oidcProvider
	switch {
	case idpID != "":
		if p = s.sso.byID[idpID]; p == nil {
			return mxerr.New(mxerr.NotFound, "unknown identity provider %q", idpID)
		}
	case len(s.sso.providers) == 1:
		p = s.sso.providers[0]
	default:
		s.ssoChooserPage(w, r, redirectURL)
		return nil
	}
	return s.startSSOFlow(w, r, p, redirectURL, "")
}

// startSSOFlow stores a flow row for p, bound to the browser, and sends
// the browser to p's authorization endpoint. uiaSession is the UIA
// session the sign-in is for ("" for a login to redirectURL).
func (s *Server) startSSOFlow(w http.ResponseWriter, r *http.Request, p *oidcProvider, redirectURL, uiaSession string) error {
	// Each start writes a row: limited like login attempts (security
	// case 29, keyed on the trusted client IP).
	if err := s.loginLimit.Allow(s.clientIP.ClientIP(r)); err != nil {
		return err
	}
	ctx := r.Context()
	meta, err := p.metadata(ctx)
	if err != nil {
		s.ssoProviderFailed(w, r, p, err)
		return nil
	}
	browser := s.ssoBrowser(w, r)
	state, nonce, verifier := newToken(""), newToken(""), newToken("")
	expires := time.Now().Add(s.cfg.ClientAPI.SSO.FlowLifetime.D())
	err = s.db.Write(ctx, func(tx storage.Tx) error {
		_, err := tx.Exec(ctx, `
			INSERT INTO sso_flows (state_hash, browser_hash, idp_id, nonce, code_verifier, redirect_url, uia_session, expires_ts)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
			hashToken(state), hashToken(browser), p.cfg.ID, nonce, verifier, redirectURL, uiaSession, expires.UnixMilli())
		return err
	})
	if err != nil {
		return err
	}
	http.Redirect(w, r, p.authorizationURL(meta, s.ssoRedirectURI(), state, nonce, verifier), http.StatusFound)
	return nil
}

// ssoRedirectURI is the callback registered at the providers, derived
// from global.public_baseurl.
func (s *Server) ssoRedirectURI() string { return s.publicBaseURL() + ssoCallbackPath }

// ssoBrowser returns the browser's identifier from its cookie, or gives
// it a new one; either way the cookie is (re)set to last the flow. A
// browser keeps one identifier across flows, so that two flows started
// in two tabs do not undo each other.
func (s *Server) ssoBrowser(w http.ResponseWriter, r *http.Request) string {
	id := ""
	if c, err := r.Cookie(ssoBrowserCookie); err == nil && validBrowserID(c.Value) {
		id = c.Value
	} else {
		id = newToken("")
	}
	http.SetCookie(w, &http.Cookie{
		Name:     ssoBrowserCookie,
		Value:    id,
		Path:     "/",
		MaxAge:   int(s.cfg.ClientAPI.SSO.FlowLifetime.D() / time.Second * 2),
		Secure:   strings.HasPrefix(s.publicBaseURL(), "https://"),
		HttpOnly: true,
		// Lax: the cookie goes with the provider's top-level redirect
		// back to the callback, not with cross-site subrequests.
		SameSite: http.SameSiteLaxMode,
	})
	return id
}

// validBrowserID accepts what newToken("") makes: 43 base64url bytes.
func validBrowserID(v string) bool {
	if len(v) != 43 {
		return false
	}
	for _, c := range []byte(v) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// browserHash is the stored form of the request's browser cookie; nil
// when the request has none.
func browserHash(r *http.Request) []byte {
	c, err := r.Cookie(ssoBrowserCookie)
	if err != nil || !validBrowserID(c.Value) {
		return nil
	}
	return hashToken(c.Value)
}

// parseClientRedirect checks a client's redirectUrl: an absolute URL of
// bounded length whose scheme cannot run script (custom schemes of
// native apps are fine). Bad ones are 400 M_INVALID_PARAM.
func parseClientRedirect(raw string) (*url.URL, error) {
	if len(raw) > maxRedirectURL {
		return nil, mxerr.New(mxerr.InvalidParam, "redirectUrl is longer than %d bytes", maxRedirectURL)
	}
	u, err := url.Parse(raw)
	if err != nil || u.Scheme == "" {
		return nil, mxerr.New(mxerr.InvalidParam, "redirectUrl is not an absolute URL")
	}
	switch strings.ToLower(u.Scheme) {
	case "javascript", "data", "vbscript", "file", "blob":
		return nil, mxerr.New(mxerr.InvalidParam, "redirectUrl may not use the %s: scheme", u.Scheme)
	}
	if (u.Scheme == "http" || u.Scheme == "https") && u.Host == "" {
		return nil, mxerr.New(mxerr.InvalidParam, "redirectUrl has no host")
	}
	return u, nil
}

// withLoginToken adds loginToken to the client's redirectUrl, keeping
// the rest of its query as it was and removing any loginToken already
// there. Spec: "Handling the callback from the Authentication server",
// step 4.
func withLoginToken(u *url.URL, token string) string {
	out := *u
	var kept []string
	if u.RawQuery != "" {
		for _, part := range strings.Split(u.RawQuery, "&") {
			key, _, _ := strings.Cut(part, "=")
			if k, err := url.QueryUnescape(key); err == nil && k == "loginToken" {
				continue
			}
			kept = append(kept, part)
		}
	}
	kept = append(kept, "loginToken="+url.QueryEscape(token))
	out.RawQuery = strings.Join(kept, "&")
	out.ForceQuery = false
	return out.String()
}

// clientName is how the confirmation page names the client: the host
// of redirectUrl, or its scheme for a native app's custom scheme.
func clientName(u *url.URL) string {
	if u.Host != "" {
		return u.Host
	}
	return u.Scheme + ":"
}

// ssoCallback answers the provider's redirect back to Myelin. Every
// failure is an error page for the user; nothing is written unless the
// whole login succeeds.
func (s *Server) ssoCallback(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	q := r.URL.Query()
	state := q.Get("state")
	if state == "" {
		s.ssoErrorPage(w, http.StatusBadRequest, "This sign-in link is incomplete (it has no state).")
		return
	}
	browser := browserHash(r)
	if browser == nil {
		s.ssoErrorPage(w, http.StatusBadRequest, "This browser did not start this sign-in (its cookie is missing). Start signing in again from your Matrix client, in this browser.")
		return
	}
	var (
		idpID, nonce, verifier, redirectURL, uiaSession string
		expires                                         int64
	)
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		// Deleting as it is read makes the state single-use; only the
		// browser that started the flow can take it.
		return tx.QueryRow(ctx, `
			DELETE FROM sso_flows WHERE state_hash = $1 AND browser_hash = $2
			RETURNING idp_id, nonce, code_verifier, redirect_url, uia_session, expires_ts`,
			hashToken(state), browser).Scan(&idpID, &nonce, &verifier, &redirectURL, &uiaSession, &expires)
	})
	if storage.IsNoRows(err) {
		s.ssoErrorPage(w, http.StatusBadRequest, "This sign-in is unknown, was already used, or was started in another browser. Start signing in again from your Matrix client.")
		return
	}
	if err != nil {
		s.ssoInternalError(w, r, err)
		return
	}
	if time.Now().UnixMilli() >= expires {
		s.ssoErrorPage(w, http.StatusBadRequest, "This sign-in took too long and has expired. Start signing in again from your Matrix client.")
		return
	}
	p := s.sso.byID[idpID]
	if p == nil {
		s.ssoErrorPage(w, http.StatusBadRequest, "The identity provider of this sign-in is no longer configured.")
		return
	}
	// OAuth 2.0 error response (RFC 6749, section 4.1.2.1).
	if e := q.Get("error"); e != "" {
		s.log.Info("identity provider refused a sign-in", "idp", idpID, "error", e)
		s.ssoErrorPage(w, http.StatusForbidden, p.cfg.Name+" did not sign you in ("+e+").")
		return
	}
	code := q.Get("code")
	if code == "" {
		s.ssoErrorPage(w, http.StatusBadRequest, "This sign-in link is incomplete (it has no code).")
		return
	}
	claims, err := s.ssoAuthenticate(ctx, p, code, verifier, nonce)
	if err != nil {
		s.ssoProviderFailed(w, r, p, err)
		return
	}
	if uiaSession != "" {
		s.ssoUIACallback(w, r, p, claims, browser, uiaSession)
		return
	}
	client, err := parseClientRedirect(redirectURL)
	if err != nil { // checked when stored
		s.ssoInternalError(w, r, err)
		return
	}
	confirm := newToken("")
	localpart, err := s.ssoAccount(ctx, p, claims, func(tx storage.Tx, localpart string) error {
		_, err := tx.Exec(ctx, `
			INSERT INTO sso_confirmations (confirm_hash, browser_hash, localpart, redirect_url, expires_ts)
			VALUES ($1, $2, $3, $4, $5)`,
			hashToken(confirm), browser, localpart, redirectURL,
			time.Now().Add(s.cfg.ClientAPI.SSO.FlowLifetime.D()).UnixMilli())
		return err
	})
	var refused *ssoRefusal
	if errors.As(err, &refused) {
		s.ssoErrorPage(w, refused.status, refused.msg)
		return
	}
	if err != nil {
		s.ssoInternalError(w, r, err)
		return
	}
	s.renderPage(w, http.StatusOK, confirmPage(clientName(client), s.userID(localpart), ssoConfirmPath, confirm))
}

// ssoAuthenticate exchanges the code, verifies the ID token and, when
// configured, adds the userinfo claims (which win over the token's).
func (s *Server) ssoAuthenticate(ctx context.Context, p *oidcProvider, code, verifier, nonce string) (map[string]any, error) {
	meta, err := p.metadata(ctx)
	if err != nil {
		return nil, err
	}
	tokens, err := p.exchange(ctx, meta, code, s.ssoRedirectURI(), verifier)
	if err != nil {
		return nil, err
	}
	claims, err := p.verifyIDToken(ctx, meta, tokens.IDToken, nonce, time.Now())
	if err != nil {
		return nil, err
	}
	if p.cfg.UserInfo {
		if tokens.AccessToken == "" {
			return nil, providerErr("the token endpoint returned no access_token for userinfo")
		}
		extra, err := p.userinfo(ctx, meta, tokens.AccessToken, claims["sub"].(string))
		if err != nil {
			return nil, err
		}
		for k, v := range extra {
			switch k {
			case "iss", "aud", "exp", "iat", "nonce", "azp", "sub":
			default:
				claims[k] = v
			}
		}
	}
	return claims, nil
}

// ssoConfirm answers the confirmation page's form: the login goes to
// the client as a single-use, short-lived m.login.token.
func (s *Server) ssoConfirm(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	if err := r.ParseForm(); err != nil {
		s.ssoErrorPage(w, http.StatusBadRequest, "The confirmation could not be read.")
		return
	}
	confirm := r.PostForm.Get("confirmation")
	browser := browserHash(r)
	if confirm == "" || browser == nil {
		s.ssoErrorPage(w, http.StatusBadRequest, "This confirmation is incomplete, or this browser did not start this sign-in.")
		return
	}
	token := newToken(loginTokenPrefix)
	var (
		localpart, redirectURL, uiaSession string
		expires                            int64
		deactivated, uiaDone               bool
	)
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		err := tx.QueryRow(ctx, `
			DELETE FROM sso_confirmations WHERE confirm_hash = $1 AND browser_hash = $2
			RETURNING localpart, redirect_url, uia_session, expires_ts`,
			hashToken(confirm), browser).Scan(&localpart, &redirectURL, &uiaSession, &expires)
		if err != nil {
			return err
		}
		acct, ok, err := lookupAccount(ctx, tx, localpart)
		if err != nil {
			return err
		}
		if deactivated = !ok || acct.deactivated; deactivated || time.Now().UnixMilli() >= expires {
			return nil // the row goes; no token
		}
		if uiaSession != "" {
			uiaDone, err = completeSSOStage(ctx, tx, uiaSession, localpart)
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO login_tokens (token_hash, localpart, expires_ts) VALUES ($1, $2, $3)`,
			hashToken(token), localpart, time.Now().Add(s.cfg.ClientAPI.SSO.LoginTokenLifetime.D()).UnixMilli())
		return err
	})
	switch {
	case storage.IsNoRows(err):
		s.ssoErrorPage(w, http.StatusBadRequest, "This confirmation is unknown, was already used, or belongs to another browser. Start signing in again from your Matrix client.")
	case err != nil:
		s.ssoInternalError(w, r, err)
	case deactivated:
		s.ssoErrorPage(w, http.StatusForbidden, "This account has been deactivated.")
	case time.Now().UnixMilli() >= expires:
		s.ssoErrorPage(w, http.StatusBadRequest, "This confirmation has expired. Start signing in again from your Matrix client.")
	case uiaSession != "" && !uiaDone:
		s.ssoErrorPage(w, http.StatusBadRequest, "The client's request has expired or was already done. Try again from your Matrix client.")
	case uiaSession != "":
		s.renderPage(w, http.StatusOK, uiaDonePage())
	default:
		u, err := parseClientRedirect(redirectURL)
		if err != nil {
			s.ssoInternalError(w, r, err)
			return
		}
		// 303: the browser follows a POST's redirect with a GET.
		http.Redirect(w, r, withLoginToken(u, token), http.StatusSeeOther)
	}
}

// ssoProviderFailed logs a provider failure and shows an error page.
func (s *Server) ssoProviderFailed(w http.ResponseWriter, r *http.Request, p *oidcProvider, err error) {
	var perr *errProvider
	if !errors.As(err, &perr) {
		s.ssoInternalError(w, r, err)
		return
	}
	s.log.Warn("single sign-on failed at the identity provider", "idp", p.cfg.ID, "err", err, "request_id", httpx.RequestID(r.Context()))
	s.ssoErrorPage(w, http.StatusBadGateway, "Signing in with "+p.cfg.Name+" failed: the identity provider could not be used or sent something Myelin could not accept. Try again later; if it keeps failing, tell the server's administrator.")
}

func (s *Server) ssoInternalError(w http.ResponseWriter, r *http.Request, err error) {
	s.log.Error("single sign-on failed", "err", err, "request_id", httpx.RequestID(r.Context()))
	s.ssoErrorPage(w, http.StatusInternalServerError, "Something went wrong on the server. Try again later.")
}

func (s *Server) ssoErrorPage(w http.ResponseWriter, status int, msg string) {
	s.renderPage(w, status, errorPage(msg))
}

// ssoChooserPage lets the user pick a provider. Spec: "present a page
// which lets the user select an IdP".
func (s *Server) ssoChooserPage(w http.ResponseWriter, r *http.Request, redirectURL string) {
	var choices []ssoChoice
	q := url.Values{"redirectUrl": {redirectURL}}
	if a := r.URL.Query().Get("action"); a != "" {
		q.Set("action", a)
	}
	for _, p := range s.sso.providers {
		choices = append(choices, ssoChoice{p.cfg.Name,
			"/_matrix/client/v3/login/sso/redirect/" + url.PathEscape(p.cfg.ID) + "?" + q.Encode()})
	}
	s.renderPage(w, http.StatusOK, chooserPage(s.serverName, choices))
}

// ssoRefusal is a login the server refuses (registration closed, a
// deactivated account, no free user ID): an error page with status.
type ssoRefusal struct {
	status int
	msg    string
}

func (e *ssoRefusal) Error() string { return e.msg }
