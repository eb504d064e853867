package clientapi_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"html"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/storage"
)

const (
	ssoRedirectPath = "/_matrix/client/v3/login/sso/redirect"
	ssoConfirmPath  = "/_myelin/client/oidc/confirm"
	// clientRedirect is the client's redirectUrl, with a query of its
	// own and a stale loginToken the server must drop.
	clientRedirect = "https://client.example/app/?hs=localhost&loginToken=stale"
)

// ssoConfig configures fake as provider "com.example.fake" (creating
// users), plus edits.
func ssoConfig(fake *fakeOIDC, edits ...func(*config.OIDCProvider)) func(*config.Config) {
	return func(c *config.Config) {
		p := config.OIDCProvider{
			ID: "com.example.fake", Name: "Fake IdP", Brand: "gitlab", Icon: "mxc://example.org/icon",
			Issuer: fake.issuer(), ClientID: fake.clientID, ClientSecret: fake.clientSecret, CreateUsers: true,
		}
		for _, e := range edits {
			e(&p)
		}
		c.ClientAPI.SSO.Providers = []config.OIDCProvider{p}
	}
}

// browser is a user agent with a cookie jar that shows each redirect
// instead of following it.
type browser struct {
	t *testing.T
	c *http.Client
}

func newBrowser(t *testing.T) *browser {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &browser{t: t, c: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}}
}

func (b *browser) do(req *http.Request) (int, http.Header, string) {
	b.t.Helper()
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(body)
}

func (b *browser) get(u string) (int, http.Header, string) {
	b.t.Helper()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		b.t.Fatal(err)
	}
	return b.do(req)
}

func (b *browser) postForm(u string, form url.Values) (int, http.Header, string) {
	b.t.Helper()
	req, err := http.NewRequest(http.MethodPost, u, strings.NewReader(form.Encode()))
	if err != nil {
		b.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return b.do(req)
}

// start walks from /login/sso/redirect through the provider, and
// returns the callback URL the provider sends the browser to (not yet
// visited).
func (b *browser) start(srv *testserver.Server, path string) string {
	b.t.Helper()
	st, h, body := b.get(srv.URL + path + "?redirectUrl=" + url.QueryEscape(clientRedirect))
	if st != http.StatusFound {
		b.t.Fatalf("GET %s: %d %s, want a redirect to the provider", path, st, body)
	}
	st, h, body = b.get(h.Get("Location"))
	if st != http.StatusFound {
		b.t.Fatalf("provider's authorize: %d %s", st, body)
	}
	callback := h.Get("Location")
	if !strings.Contains(callback, "/_myelin/client/oidc/callback?") {
		b.t.Fatalf("the provider redirected to %s", callback)
	}
	return callback
}

var confirmationField = regexp.MustCompile(`name="confirmation" value="([^"]+)"`)

// callback visits the callback and returns the status, the page, and
// the confirmation in its form ("" if none).
func (b *browser) callback(u string) (int, string, string) {
	b.t.Helper()
	st, _, page := b.get(u)
	m := confirmationField.FindStringSubmatch(page)
	if m == nil {
		return st, page, ""
	}
	return st, page, html.UnescapeString(m[1])
}

// confirm posts the confirmation and returns the status and where the
// browser is sent.
func (b *browser) confirm(srv *testserver.Server, confirmation string) (int, string) {
	b.t.Helper()
	st, h, _ := b.postForm(srv.URL+ssoConfirmPath, url.Values{"confirmation": {confirmation}})
	return st, h.Get("Location")
}

// login runs the whole browser flow and returns the login token handed
// to the client.
func (b *browser) login(srv *testserver.Server, path string) string {
	b.t.Helper()
	st, page, confirmation := b.callback(b.start(srv, path))
	if st != http.StatusOK || confirmation == "" {
		b.t.Fatalf("callback: %d %s", st, page)
	}
	st, location := b.confirm(srv, confirmation)
	if st != http.StatusSeeOther {
		b.t.Fatalf("confirm: %d, want 303", st)
	}
	u, err := url.Parse(location)
	if err != nil || u.Host != "client.example" || u.Path != "/app/" {
		b.t.Fatalf("sent to %q, want the client's redirectUrl", location)
	}
	q := u.Query()
	if q.Get("hs") != "localhost" || len(q["loginToken"]) != 1 || q.Get("loginToken") == "stale" {
		b.t.Fatalf("sent to %q: want hs kept and exactly one new loginToken", location)
	}
	return q.Get("loginToken")
}

// tokenLogin exchanges a login token with mautrix and checks whoami.
func tokenLogin(t *testing.T, srv *testserver.Server, token, wantUser string) {
	t.Helper()
	ctx := context.Background()
	cli := client(t, srv, "", "")
	resp, err := cli.Login(ctx, &mautrix.ReqLogin{Type: mautrix.AuthTypeToken, Token: token, StoreCredentials: true})
	if err != nil || resp.UserID.String() != wantUser {
		t.Fatalf("m.login.token: %+v %v, want %s", resp, err, wantUser)
	}
	who, err := cli.Whoami(ctx)
	if err != nil || who.UserID.String() != wantUser {
		t.Fatalf("whoami: %+v %v, want %s", who, err, wantUser)
	}
}

// available reports whether a username is free (no account was made).
func available(t *testing.T, srv *testserver.Server, name string) bool {
	t.Helper()
	st, body := call(t, "GET", srv.URL+"/_matrix/client/v3/register/available?username="+name, "", nil)
	return st == 200 && body["available"] == true
}

// Spec: client-server-api, "Client login via SSO": GET /login lists
// m.login.sso with the identity providers; the browser goes through the
// provider and back, confirms, and the client gets a login token for
// POST /login.
func TestSSOLogin(t *testing.T) {
	fake := newFakeOIDC(t)
	testserver.ForEachEngine(t, ssoConfig(fake), func(t *testing.T, srv *testserver.Server) {
		fake.reset()
		ctx := context.Background()
		flows, err := client(t, srv, "", "").GetLoginFlows(ctx)
		if err != nil || !flows.HasFlow(mautrix.AuthTypeToken) || !flows.HasFlow(mautrix.AuthTypeSSO) {
			t.Fatalf("login flows: %+v %v", flows, err)
		}
		st, body := call(t, "GET", srv.URL+"/_matrix/client/v3/login", "", nil)
		var idps []any
		for _, f := range body["flows"].([]any) {
			if f.(map[string]any)["type"] == "m.login.sso" {
				idps, _ = f.(map[string]any)["identity_providers"].([]any)
			}
		}
		if st != 200 || len(idps) != 1 {
			t.Fatalf("GET /login: %d %v", st, body)
		}
		idp := idps[0].(map[string]any)
		if idp["id"] != "com.example.fake" || idp["name"] != "Fake IdP" || idp["brand"] != "gitlab" || idp["icon"] != "mxc://example.org/icon" {
			t.Fatalf("identity provider: %v", idp)
		}

		// First login: the account is created from preferred_username,
		// with the display name; the page names the client's host.
		b := newBrowser(t)
		st, page, confirmation := b.callback(b.start(srv, ssoRedirectPath))
		if st != 200 || confirmation == "" || !strings.Contains(page, "Continue to client.example?") || !strings.Contains(page, "@alice:localhost") {
			t.Fatalf("confirmation page: %d %s", st, page)
		}
		st, location := b.confirm(srv, confirmation)
		if st != http.StatusSeeOther {
			t.Fatalf("confirm: %d", st)
		}
		u, _ := url.Parse(location)
		token := u.Query().Get("loginToken")
		tokenLogin(t, srv, token, "@alice:localhost")
		// The token is single-use, and so is the confirmation.
		st, body = call(t, "POST", srv.URL+"/_matrix/client/v3/login", "", map[string]any{"type": "m.login.token", "token": token})
		expectError(t, "reused login token", st, body, 403, "M_FORBIDDEN")
		if st, _ := b.confirm(srv, confirmation); st != http.StatusBadRequest {
			t.Fatalf("reused confirmation: %d, want 400", st)
		}
		st, body = call(t, "GET", srv.URL+"/_matrix/client/v3/profile/@alice:localhost/displayname", "", nil)
		if st != 200 || body["displayname"] != "Alice Liddell" {
			t.Fatalf("display name: %d %v", st, body)
		}

		// A second login of the same subject, through the IdP-specific
		// endpoint, is the same account; so is one after the user was
		// renamed at the provider.
		tokenLogin(t, srv, newBrowser(t).login(srv, ssoRedirectPath+"/com.example.fake"), "@alice:localhost")
		fake.set(func(f *fakeOIDC) { f.username, f.name = "alice.renamed", "Renamed" })
		tokenLogin(t, srv, newBrowser(t).login(srv, ssoRedirectPath), "@alice:localhost")
		if !available(t, srv, "alice.renamed") {
			t.Fatal("the renamed user got a second account")
		}
		st, body = call(t, "GET", srv.URL+"/_matrix/client/v3/profile/@alice:localhost/displayname", "", nil)
		if body["displayname"] != "Alice Liddell" {
			t.Fatalf("a later login changed the display name: %d %v", st, body)
		}

		// Another subject with the same username gets its own account,
		// with a suffix; ES256 tokens verify too.
		fake.set(func(f *fakeOIDC) { f.sub, f.username, f.alg = "subject-2", "ALICE", "ES256" })
		tokenLogin(t, srv, newBrowser(t).login(srv, ssoRedirectPath), "@alice2:localhost")
		// No preferred_username: the localpart is sub, mapped.
		fake.set(func(f *fakeOIDC) { f.sub, f.username = "Sub#3", "" })
		tokenLogin(t, srv, newBrowser(t).login(srv, ssoRedirectPath), "@sub=233:localhost")
	})
}

// A provider with client_secret_post and userinfo: the userinfo claims
// name the new user.
func TestSSOClientSecretPostAndUserinfo(t *testing.T) {
	fake := newFakeOIDC(t)
	testserver.ForEachEngine(t, ssoConfig(fake, func(p *config.OIDCProvider) {
		p.ClientAuthMethod, p.UserInfo, p.LocalpartClaim = "client_secret_post", true, "nickname"
	}), func(t *testing.T, srv *testserver.Server) {
		fake.reset()
		fake.set(func(f *fakeOIDC) {
			f.authMethod = "client_secret_post"
			f.userinfoClaims = map[string]any{"nickname": "bob", "name": "Bob"}
		})
		tokenLogin(t, srv, newBrowser(t).login(srv, ssoRedirectPath), "@bob:localhost")
		st, body := call(t, "GET", srv.URL+"/_matrix/client/v3/profile/@bob:localhost/displayname", "", nil)
		if st != 200 || body["displayname"] != "Bob" {
			t.Fatalf("display name from userinfo: %d %v", st, body)
		}
	})
}

// Spec: sso_login_redirect.yaml: redirectUrl is required, an unknown
// idpId is 404; with several providers and none named, a page lets the
// user choose.
func TestSSORedirectErrors(t *testing.T) {
	fake := newFakeOIDC(t)
	testserver.ForEachEngine(t, func(c *config.Config) {
		ssoConfig(fake)(c)
		second := c.ClientAPI.SSO.Providers[0]
		second.ID, second.Name = "com.example.other", "Other <IdP>"
		c.ClientAPI.SSO.Providers = append(c.ClientAPI.SSO.Providers, second)
	}, func(t *testing.T, srv *testserver.Server) {
		fake.reset()
		st, body := call(t, "GET", srv.URL+ssoRedirectPath, "", nil)
		expectError(t, "no redirectUrl", st, body, 400, "M_MISSING_PARAM")
		st, body = call(t, "GET", srv.URL+ssoRedirectPath+"/com.example.fake", "", nil)
		expectError(t, "no redirectUrl (idp)", st, body, 400, "M_MISSING_PARAM")
		st, body = call(t, "GET", srv.URL+ssoRedirectPath+"/com.example.nope?redirectUrl=https://c.example/", "", nil)
		expectError(t, "unknown idpId", st, body, 404, "M_NOT_FOUND")
		st, body = call(t, "GET", srv.URL+ssoRedirectPath+"/com.example.fake?redirectUrl="+url.QueryEscape("javascript:alert(1)"), "", nil)
		expectError(t, "javascript: redirectUrl", st, body, 400, "M_INVALID_PARAM")
		st, body = call(t, "GET", srv.URL+ssoRedirectPath+"/com.example.fake?redirectUrl=https://c.example/&action=delete", "", nil)
		expectError(t, "bad action", st, body, 400, "M_INVALID_PARAM")

		b := newBrowser(t)
		st, h, page := b.get(srv.URL + ssoRedirectPath + "?action=login&redirectUrl=" + url.QueryEscape(clientRedirect))
		if st != 200 || !strings.Contains(h.Get("Content-Type"), "text/html") || !strings.Contains(page, "Other &lt;IdP&gt;") ||
			!strings.Contains(page, `href="/_matrix/client/v3/login/sso/redirect/com.example.fake?action=login&amp;redirectUrl=`+url.QueryEscape(clientRedirect)) {
			t.Fatalf("chooser page: %d %s", st, page)
		}
		// A native app's custom scheme is fine, and the page names it.
		st, h, _ = b.get(srv.URL + ssoRedirectPath + "/com.example.fake?redirectUrl=" + url.QueryEscape("io.element.app:/callback"))
		if st != http.StatusFound {
			t.Fatalf("custom scheme redirectUrl: %d", st)
		}
		st, h, _ = b.get(h.Get("Location"))
		st, page, _ = b.callback(h.Get("Location"))
		if st != 200 || !strings.Contains(page, "Continue to io.element.app:?") {
			t.Fatalf("custom scheme confirmation: %d %s", st, page)
		}
	})
}

// Every failure of the callback is an error page, hands no token over
// and creates no account.
func TestSSOCallbackFailures(t *testing.T) {
	fake := newFakeOIDC(t)
	testserver.ForEachEngine(t, ssoConfig(fake), func(t *testing.T, srv *testserver.Server) {
		// Until the one successful sign-in below, alice must stay free.
		free := "alice"
		expectPage := func(what string, st int, page, confirmation string, want int) {
			t.Helper()
			if st != want || confirmation != "" || !strings.Contains(page, "Could not sign in") {
				t.Fatalf("%s: %d (want %d) %s", what, st, want, page)
			}
			if !available(t, srv, free) {
				t.Fatalf("%s: an account was created", what)
			}
		}
		fake.reset()

		// The ID token's checks (OpenID Connect Core 1.0, 3.1.3.7).
		for _, tc := range []struct {
			name string
			set  func(f *fakeOIDC)
		}{
			{"bad signature", func(f *fakeOIDC) { f.badSignature = true }},
			{"bad ES256 signature", func(f *fakeOIDC) { f.alg, f.badSignature = "ES256", true }},
			{"alg none", func(f *fakeOIDC) { f.alg = "none" }},
			{"wrong iss", func(f *fakeOIDC) { f.mutate = func(c map[string]any) { c["iss"] = "https://evil.example" } }},
			{"wrong aud", func(f *fakeOIDC) { f.mutate = func(c map[string]any) { c["aud"] = "another-client" } }},
			{"aud list with wrong azp", func(f *fakeOIDC) {
				f.mutate = func(c map[string]any) { c["aud"], c["azp"] = []string{f.clientID, "other"}, "other" }
			}},
			{"aud list without azp", func(f *fakeOIDC) {
				f.mutate = func(c map[string]any) { c["aud"] = []string{f.clientID, "other"} }
			}},
			{"azp of another client", func(f *fakeOIDC) { f.mutate = func(c map[string]any) { c["azp"] = "other" } }},
			{"wrong nonce", func(f *fakeOIDC) { f.mutate = func(c map[string]any) { c["nonce"] = "not-the-nonce" } }},
			{"no nonce", func(f *fakeOIDC) { f.mutate = func(c map[string]any) { delete(c, "nonce") } }},
			{"expired", func(f *fakeOIDC) {
				f.mutate = func(c map[string]any) { c["exp"] = time.Now().Add(-2 * time.Minute).Unix() }
			}},
			{"no exp", func(f *fakeOIDC) { f.mutate = func(c map[string]any) { delete(c, "exp") } }},
		} {
			fake.reset()
			fake.set(tc.set)
			b := newBrowser(t)
			st, page, confirmation := b.callback(b.start(srv, ssoRedirectPath))
			expectPage(tc.name, st, page, confirmation, http.StatusBadGateway)
		}
		fake.reset()

		// The provider refused the user.
		fake.set(func(f *fakeOIDC) { f.refuse = "access_denied" })
		b := newBrowser(t)
		st, page, confirmation := b.callback(b.start(srv, ssoRedirectPath))
		expectPage("access_denied", st, page, confirmation, http.StatusForbidden)
		fake.reset()

		// A state that was never issued.
		b = newBrowser(t)
		callback := b.start(srv, ssoRedirectPath)
		cu, _ := url.Parse(callback)
		q := cu.Query()
		q.Set("state", "forged-state")
		cu.RawQuery = q.Encode()
		st, page, confirmation = b.callback(cu.String())
		expectPage("wrong state", st, page, confirmation, http.StatusBadRequest)
		// No state at all.
		q.Del("state")
		cu.RawQuery = q.Encode()
		st, page, confirmation = b.callback(cu.String())
		expectPage("no state", st, page, confirmation, http.StatusBadRequest)
		// The right state from another browser (no cookie; then a cookie
		// of its own) is refused, and does not use the flow up.
		st, page, confirmation = newBrowser(t).callback(callback)
		expectPage("missing cookie", st, page, confirmation, http.StatusBadRequest)
		if !strings.Contains(page, "cookie is missing") {
			t.Fatalf("missing cookie: the page does not say so: %s", page)
		}
		other := newBrowser(t)
		other.get(srv.URL + ssoRedirectPath + "?redirectUrl=" + url.QueryEscape(clientRedirect))
		st, page, confirmation = other.callback(callback)
		expectPage("another browser's cookie", st, page, confirmation, http.StatusBadRequest)
		// The browser that started it succeeds once; the same callback
		// again (reused state) fails.
		st, page, confirmation = b.callback(callback)
		if st != 200 || confirmation == "" {
			t.Fatalf("the right browser: %d %s", st, page)
		}
		st, page, again := b.callback(callback)
		if st != http.StatusBadRequest || again != "" {
			t.Fatalf("reused state: %d %s", st, page)
		}
		// A confirmation needs the browser's cookie too: none, or another
		// browser's, is refused (and does not use it up).
		if st, _ := newBrowser(t).confirm(srv, confirmation); st != http.StatusBadRequest {
			t.Fatalf("confirmation without a cookie: %d", st)
		}
		if st, _ := other.confirm(srv, confirmation); st != http.StatusBadRequest {
			t.Fatalf("confirmation from another browser: %d", st)
		}
		if st, location := b.confirm(srv, confirmation); st != http.StatusSeeOther || !strings.Contains(location, "loginToken=") {
			t.Fatalf("confirmation: %d %s", st, location)
		}

		// A replayed code: a new flow's state with the used code is
		// refused by the provider.
		fake.set(func(f *fakeOIDC) { f.sub, f.username = "subject-replay", "replay" })
		free = "replay"
		usedCode := cu.Query().Get("code")
		replay, _ := url.Parse(b.start(srv, ssoRedirectPath))
		q = replay.Query()
		q.Set("code", usedCode)
		replay.RawQuery = q.Encode()
		st, page, confirmation = b.callback(replay.String())
		expectPage("replayed code", st, page, confirmation, http.StatusBadGateway)
	})
}

// Discovery: a failure is not kept (the next login reads it again), and
// a document naming another issuer is refused.
func TestSSODiscovery(t *testing.T) {
	fake := newFakeOIDC(t)
	testserver.ForEachEngine(t, ssoConfig(fake), func(t *testing.T, srv *testserver.Server) {
		fake.reset()
		fake.set(func(f *fakeOIDC) { f.discoveryFailures = 1 })
		st, _, page := newBrowser(t).get(srv.URL + ssoRedirectPath + "?redirectUrl=" + url.QueryEscape(clientRedirect))
		if st != http.StatusBadGateway || !strings.Contains(page, "Could not sign in") {
			t.Fatalf("discovery down: %d %s", st, page)
		}
		tokenLogin(t, srv, newBrowser(t).login(srv, ssoRedirectPath), "@alice:localhost")
		// The document is kept now: more logins do not read it again.
		fake.set(func(f *fakeOIDC) { f.discoveryReads = 0 })
		newBrowser(t).login(srv, ssoRedirectPath)
		fake.set(func(f *fakeOIDC) {
			if f.discoveryReads != 0 {
				t.Errorf("discovery read %d times within its cache lifetime", f.discoveryReads)
			}
		})
	})
	t.Run("issuer mismatch", func(t *testing.T) {
		fake.reset()
		fake.set(func(f *fakeOIDC) { f.discoveryIssuer = "https://evil.example" })
		srv := testserver.Start(t, storage.SQLite, ssoConfig(fake))
		st, _, page := newBrowser(t).get(srv.URL + ssoRedirectPath + "?redirectUrl=" + url.QueryEscape(clientRedirect))
		if st != http.StatusBadGateway || !strings.Contains(page, "Could not sign in") {
			t.Fatalf("issuer mismatch: %d %s", st, page)
		}
	})
}

// Registration rules: with registration closed, a provider without
// create_users makes no account, one with it does; a deactivated
// account is refused, at the callback and at the confirmation
// (security case 30).
func TestSSOAccountRules(t *testing.T) {
	fake := newFakeOIDC(t)
	testserver.ForEachEngine(t, func(c *config.Config) {
		c.ClientAPI.Registration = "closed"
		ssoConfig(fake, func(p *config.OIDCProvider) { p.CreateUsers = false })(c)
		creating := c.ClientAPI.SSO.Providers[0]
		creating.ID, creating.CreateUsers = "com.example.creating", true
		c.ClientAPI.SSO.Providers = append(c.ClientAPI.SSO.Providers, creating)
	}, func(t *testing.T, srv *testserver.Server) {
		fake.reset()
		ctx := context.Background()
		b := newBrowser(t)
		st, page, confirmation := b.callback(b.start(srv, ssoRedirectPath+"/com.example.fake"))
		if st != http.StatusForbidden || confirmation != "" || !available(t, srv, "alice") {
			t.Fatalf("closed registration: %d %s", st, page)
		}
		tokenLogin(t, srv, newBrowser(t).login(srv, ssoRedirectPath+"/com.example.creating"), "@alice:localhost")
		// The same subject at the other provider is another user, whom
		// that provider may still not create.
		b = newBrowser(t)
		if st, page, _ := b.callback(b.start(srv, ssoRedirectPath+"/com.example.fake")); st != http.StatusForbidden {
			t.Fatalf("subject of another provider: %d %s", st, page)
		}

		// Signed in at the provider, then deactivated before confirming:
		// the confirmation is refused; so is every later sign-in.
		cli := client(t, srv, "", "")
		if _, err := cli.Login(ctx, &mautrix.ReqLogin{Type: mautrix.AuthTypeToken,
			Token: newBrowser(t).login(srv, ssoRedirectPath+"/com.example.creating"), StoreCredentials: true}); err != nil {
			t.Fatal(err)
		}
		b = newBrowser(t)
		st, page, confirmation = b.callback(b.start(srv, ssoRedirectPath+"/com.example.creating"))
		if st != 200 || confirmation == "" {
			t.Fatalf("callback: %d %s", st, page)
		}
		if err := srv.HS.ClientAPI.Accounts().Deactivate(ctx, "alice"); err != nil {
			t.Fatal(err)
		}
		if st, location := b.confirm(srv, confirmation); st != http.StatusForbidden || location != "" {
			t.Fatalf("confirmation after deactivation: %d %s, want 403", st, location)
		}
		b = newBrowser(t)
		st, page, confirmation = b.callback(b.start(srv, ssoRedirectPath+"/com.example.creating"))
		if st != http.StatusForbidden || confirmation != "" || !strings.Contains(page, "deactivated") {
			t.Fatalf("deactivated user: %d %s", st, page)
		}
		if !available(t, srv, "alice2") {
			t.Fatal("the deactivated user's sign-in made a new account")
		}
		if _, err := cli.Whoami(ctx); !errors.Is(err, mautrix.MUnknownToken) {
			t.Fatalf("deactivated user's token: %v", err)
		}
	})
}

// Spec: client-server-api, "SSO during User-Interactive Authentication":
// a user who signs in only through SSO is offered the m.login.sso stage,
// completes it through the fallback page (provider, then a confirmation
// naming the operation) and retries with the session only.
func TestSSOUserInteractiveAuth(t *testing.T) {
	fake := newFakeOIDC(t)
	testserver.ForEachEngine(t, ssoConfig(fake), func(t *testing.T, srv *testserver.Server) {
		fake.reset()
		ctx := context.Background()
		login := func() *mautrix.Client {
			cli := client(t, srv, "", "")
			if _, err := cli.Login(ctx, &mautrix.ReqLogin{Type: mautrix.AuthTypeToken,
				Token: newBrowser(t).login(srv, ssoRedirectPath), StoreCredentials: true}); err != nil {
				t.Fatal(err)
			}
			return cli
		}
		a, b := login(), login()
		deleteB := func(auth any) (int, map[string]any) {
			body := map[string]any{"devices": []string{b.DeviceID.String()}}
			if auth != nil {
				body["auth"] = auth
			}
			return call(t, "POST", srv.URL+"/_matrix/client/v3/delete_devices", a.AccessToken, body)
		}
		st, body := deleteB(nil)
		session, _ := body["session"].(string)
		flows, _ := body["flows"].([]any)
		if st != 401 || session == "" || len(flows) != 1 || len(flows[0].(map[string]any)["stages"].([]any)) != 1 ||
			flows[0].(map[string]any)["stages"].([]any)[0] != "m.login.sso" {
			t.Fatalf("challenge for an SSO-only user: %d %v", st, body)
		}
		// A password user is offered the password stage only.
		pw := registerUser(t, srv, "carol")
		st, body = call(t, "POST", srv.URL+"/_matrix/client/v3/delete_devices", pw.AccessToken, map[string]any{"devices": []string{"X"}})
		if st != 401 || len(body["flows"].([]any)) != 1 || body["flows"].([]any)[0].(map[string]any)["stages"].([]any)[0] != "m.login.password" {
			t.Fatalf("challenge for a password user: %d %v", st, body)
		}
		// The stage cannot be passed by posting it.
		st, body = deleteB(map[string]any{"type": "m.login.sso", "session": session})
		if st != 401 || body["errcode"] != "M_FORBIDDEN" {
			t.Fatalf("posting m.login.sso: %d %v", st, body)
		}
		fallback := srv.URL + "/_matrix/client/v3/auth/m.login.sso/fallback/web?session=" + url.QueryEscape(session)
		walk := func(br *browser) (int, string, string) {
			st, h, page := br.get(fallback)
			if st != http.StatusFound {
				t.Fatalf("fallback page: %d %s", st, page)
			}
			st, h, page = br.get(h.Get("Location"))
			if st != http.StatusFound {
				t.Fatalf("provider: %d %s", st, page)
			}
			return br.callback(h.Get("Location"))
		}
		if st, _, page := newBrowser(t).get(srv.URL + "/_matrix/client/v3/auth/m.login.sso/fallback/web?session=nope"); st != 400 {
			t.Fatalf("unknown session: %d %s", st, page)
		}

		// Someone else signing in at the provider does not pass it: a
		// user of this server (mallory, @alice2) or a stranger.
		fake.set(func(f *fakeOIDC) { f.sub = "subject-mallory" })
		tokenLogin(t, srv, newBrowser(t).login(srv, ssoRedirectPath), "@alice2:localhost")
		if st, page, confirmation := walk(newBrowser(t)); st != http.StatusForbidden || confirmation != "" {
			t.Fatalf("another user: %d %s", st, page)
		}
		fake.set(func(f *fakeOIDC) { f.sub = "subject-stranger" })
		if st, page, confirmation := walk(newBrowser(t)); st != http.StatusForbidden || confirmation != "" {
			t.Fatalf("a stranger: %d %s", st, page)
		}
		fake.set(func(f *fakeOIDC) { f.sub = "subject-1" })
		br := newBrowser(t)
		st, page, confirmation := walk(br)
		if st != 200 || confirmation == "" || !strings.Contains(page, "sign devices out") {
			t.Fatalf("confirmation page: %d %s", st, page)
		}
		// Signing in at the provider is not enough: the user confirms.
		if st, body := deleteB(map[string]any{"session": session}); st != 401 {
			t.Fatalf("before the confirmation: %d %v", st, body)
		}
		st, h, page := br.postForm(srv.URL+ssoConfirmPath, url.Values{"confirmation": {confirmation}})
		if st != 200 || !strings.Contains(page, `window.opener.postMessage("authDone", "*")`) ||
			!strings.Contains(h.Get("Content-Security-Policy"), "script-src 'sha256-") {
			t.Fatalf("completion page: %d %v %s", st, h, page)
		}
		// The page's script is the one its Content-Security-Policy allows.
		script := page[strings.Index(page, "<script>")+len("<script>") : strings.Index(page, "</script>")]
		sum := sha256.Sum256([]byte(script))
		if !strings.Contains(h.Get("Content-Security-Policy"), "'sha256-"+base64.StdEncoding.EncodeToString(sum[:])+"'") {
			t.Fatalf("the completion script's hash is not in %q", h.Get("Content-Security-Policy"))
		}
		if st, body := deleteB(map[string]any{"session": session}); st != 200 {
			t.Fatalf("retry with the session: %d %v", st, body)
		}
		if _, err := b.Whoami(ctx); !errors.Is(err, mautrix.MUnknownToken) {
			t.Fatalf("the deleted device's token: %v", err)
		}
	})
}
