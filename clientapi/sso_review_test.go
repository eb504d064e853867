package clientapi_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"html"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/storage"
)

// ageSSORows moves the expiry of every row of table (sso_flows or
// sso_confirmations) a second into the past, as if the browser took
// longer than client_api.sso.flow_lifetime (the sweeper, every ten
// minutes, has not removed them yet).
func ageSSORows(t *testing.T, srv *testserver.Server, table string) {
	t.Helper()
	ctx := context.Background()
	err := srv.HS.DB.Write(ctx, func(tx storage.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE `+table+` SET expires_ts = $1`, time.Now().Add(-time.Second).UnixMilli())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A sign-in whose browser comes back from the provider after the flow's
// lifetime is refused, and so is a confirmation posted after it: no
// account, no login token. (Client_api.sso.flow_lifetime bounds both.)
func TestSSOFlowAndConfirmationExpire(t *testing.T) {
	fake := newFakeOIDC(t)
	testserver.ForEachEngine(t, ssoConfig(fake), func(t *testing.T, srv *testserver.Server) {
		fake.reset()
		ctx := context.Background()
		b := newBrowser(t)
		callback := b.start(srv, ssoRedirectPath)
		ageSSORows(t, srv, "sso_flows")
		st, page, confirmation := b.callback(callback)
		if st != http.StatusBadRequest || confirmation != "" || !strings.Contains(page, "expired") {
			t.Fatalf("callback after the flow's lifetime: %d %s", st, page)
		}
		if !available(t, srv, "alice") {
			t.Fatal("an expired sign-in created an account")
		}

		b = newBrowser(t)
		st, page, confirmation = b.callback(b.start(srv, ssoRedirectPath))
		if st != http.StatusOK || confirmation == "" {
			t.Fatalf("callback: %d %s", st, page)
		}
		ageSSORows(t, srv, "sso_confirmations")
		st, h, page := b.postForm(srv.URL+ssoConfirmPath, url.Values{"confirmation": {confirmation}})
		if st != http.StatusBadRequest || h.Get("Location") != "" || !strings.Contains(page, "expired") {
			t.Fatalf("confirmation after its lifetime: %d %q %s", st, h.Get("Location"), page)
		}
		var tokens int
		if err := srv.HS.DB.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM login_tokens`).Scan(&tokens); err != nil {
			t.Fatal(err)
		}
		if tokens != 0 {
			t.Fatalf("an expired confirmation left %d login tokens", tokens)
		}
	})
}

// More of OpenID Connect Core 1.0, 3.1.3.7 and RFC 7515: an ID token
// without a usable sub, with a critical header extension, or whose
// header names another algorithm than its key's (or a signature of the
// wrong length) is refused with the provider's error page, and no
// account is made.
func TestSSOIDTokenRefusals(t *testing.T) {
	fake := newFakeOIDC(t)
	srv := testserver.Start(t, storage.SQLite, ssoConfig(fake))
	for _, tc := range []struct {
		name string
		set  func(f *fakeOIDC)
	}{
		{"no sub", func(f *fakeOIDC) { f.mutate = func(c map[string]any) { delete(c, "sub") } }},
		{"empty sub", func(f *fakeOIDC) { f.mutate = func(c map[string]any) { c["sub"] = "" } }},
		{"sub not a string", func(f *fakeOIDC) { f.mutate = func(c map[string]any) { c["sub"] = 12 } }},
		{"sub of 256 bytes", func(f *fakeOIDC) { f.mutate = func(c map[string]any) { c["sub"] = strings.Repeat("s", 256) } }},
		{"issued in the future", func(f *fakeOIDC) {
			f.mutate = func(c map[string]any) { c["iat"] = time.Now().Add(10 * time.Minute).Unix() }
		}},
		{"critical header extension", func(f *fakeOIDC) { f.header = func(h map[string]any) { h["crit"] = []string{"exp"} } }},
		{"RSA signature labelled RS512", func(f *fakeOIDC) { f.header = func(h map[string]any) { h["alg"] = "RS512" } }},
		{"RSA signature labelled HS256", func(f *fakeOIDC) { f.header = func(h map[string]any) { h["alg"] = "HS256" } }},
		{"EC signature labelled ES384", func(f *fakeOIDC) {
			f.alg, f.header = "ES256", func(h map[string]any) { h["alg"] = "ES384" }
		}},
		{"short ES256 signature", func(f *fakeOIDC) {
			f.alg, f.signature = "ES256", func(sig []byte) []byte { return sig[:16] }
		}},
		{"ES256 signature of 65 bytes", func(f *fakeOIDC) {
			f.alg, f.signature = "ES256", func(sig []byte) []byte { return append([]byte{0}, sig...) }
		}},
	} {
		fake.reset()
		fake.set(tc.set)
		b := newBrowser(t)
		st, page, confirmation := b.callback(b.start(srv, ssoRedirectPath))
		if st != http.StatusBadGateway || confirmation != "" || !strings.Contains(page, "Could not sign in") {
			t.Errorf("%s: %d (want 502) %s", tc.name, st, page)
		}
		if !available(t, srv, "alice") {
			t.Fatalf("%s: an account was created", tc.name)
		}
	}
	// The same provider, untouched, signs alice in.
	fake.reset()
	tokenLogin(t, srv, newBrowser(t).login(srv, ssoRedirectPath), "@alice:localhost")
}

// OpenID Connect Discovery: a document whose endpoints are not https
// (but on a loopback address) is refused: the token endpoint gets the
// client secret and the code, the userinfo endpoint the access token.
// The userinfo answer must be about the ID token's subject (Core 1.0,
// 5.3.2).
func TestSSOProviderEndpointsAndUserinfo(t *testing.T) {
	fake := newFakeOIDC(t)
	srv := testserver.Start(t, storage.SQLite, ssoConfig(fake, func(p *config.OIDCProvider) { p.UserInfo = true }))
	for _, endpoint := range []string{"token_endpoint", "authorization_endpoint", "jwks_uri", "userinfo_endpoint"} {
		fake.reset()
		fake.set(func(f *fakeOIDC) {
			f.discoveryEdit = func(doc map[string]any) { doc[endpoint] = "http://idp.example/" + endpoint }
		})
		st, _, page := newBrowser(t).get(srv.URL + ssoRedirectPath + "?redirectUrl=" + url.QueryEscape(clientRedirect))
		if st != http.StatusBadGateway || !strings.Contains(page, "Could not sign in") {
			t.Errorf("%s over plain http: %d %s", endpoint, st, page)
		}
	}
	// A provider whose PKCE methods leave S256 out is refused.
	fake.reset()
	fake.set(func(f *fakeOIDC) {
		f.discoveryEdit = func(doc map[string]any) { doc["code_challenge_methods_supported"] = []string{"plain"} }
	})
	if st, _, page := newBrowser(t).get(srv.URL + ssoRedirectPath + "?redirectUrl=" + url.QueryEscape(clientRedirect)); st != http.StatusBadGateway {
		t.Errorf("no PKCE S256: %d %s", st, page)
	}

	// userinfo naming another subject.
	fake.reset()
	fake.set(func(f *fakeOIDC) {
		f.userinfoClaims = map[string]any{"sub": "subject-2", "preferred_username": "mallory"}
	})
	b := newBrowser(t)
	st, page, confirmation := b.callback(b.start(srv, ssoRedirectPath))
	if st != http.StatusBadGateway || confirmation != "" {
		t.Fatalf("userinfo of another subject: %d %s", st, page)
	}
	if !available(t, srv, "alice") || !available(t, srv, "mallory") {
		t.Fatal("userinfo of another subject: an account was created")
	}
}

// Spec: sso_login_redirect.yaml; security considerations of "Client
// login via SSO": a redirectUrl the browser would run as script or load
// from the machine, one without a host, and an overlong one are 400
// M_INVALID_PARAM, whatever the scheme's case.
func TestSSORedirectURLRefused(t *testing.T) {
	fake := newFakeOIDC(t)
	srv := testserver.Start(t, storage.SQLite, ssoConfig(fake))
	for _, bad := range []string{
		"javascript:alert(1)", "JavaScript:alert(1)", "data:text/html,<script>alert(1)</script>",
		"DATA:text/html;base64,PHNjcmlwdD4=", "vbscript:msgbox(1)", "file:///etc/passwd", "blob:https://evil.example/uuid",
		"https:///no-host", "http:/one-slash", "https:opaque", "/relative/path", "no-scheme.example/path",
		"https://client.example/" + strings.Repeat("a", 2048),
	} {
		st, body := call(t, "GET", srv.URL+ssoRedirectPath+"/com.example.fake?redirectUrl="+url.QueryEscape(bad), "", nil)
		expectError(t, "redirectUrl "+bad, st, body, 400, "M_INVALID_PARAM")
	}
}

// The page asking whether the client may have the login names the
// client by redirectUrl's host, which the client chose: html/template
// escapes it (markup in a host is valid in Go's URL parser), and the
// browser cookie is HttpOnly and SameSite=Lax.
func TestSSOConfirmationPageEscapesClient(t *testing.T) {
	fake := newFakeOIDC(t)
	srv := testserver.Start(t, storage.SQLite, ssoConfig(fake))
	redirect := `https://"><b>evil<i>.example/app`
	b := newBrowser(t)
	st, h, page := b.get(srv.URL + ssoRedirectPath + "?redirectUrl=" + url.QueryEscape(redirect))
	if st != http.StatusFound {
		t.Fatalf("redirect: %d %s", st, page)
	}
	cookie := strings.Join(h.Values("Set-Cookie"), "\n")
	if !strings.Contains(cookie, "myelin_sso_browser=") || !strings.Contains(cookie, "HttpOnly") || !strings.Contains(cookie, "SameSite=Lax") {
		t.Errorf("browser cookie: %q", cookie)
	}
	st, h, page = b.get(h.Get("Location"))
	st, h, page = b.get(h.Get("Location"))
	if st != http.StatusOK || !strings.Contains(page, `name="confirmation"`) {
		t.Fatalf("callback: %d %s", st, page)
	}
	// The page may not be framed: its button must not be clickjacked.
	if h.Get("X-Frame-Options") != "DENY" || !strings.Contains(h.Get("Content-Security-Policy"), "frame-ancestors 'none'") {
		t.Errorf("the confirmation page may be framed: %v", h)
	}
	if strings.Contains(page, "<b>evil") || !strings.Contains(page, "&lt;b&gt;evil&lt;i&gt;.example") {
		t.Fatalf("the client's name is not escaped: %s", page)
	}
}

// A first sign-in never takes a user ID an application service reserves
// (exclusive namespace): not the mapped name, nor it with a number.
func TestSSOAvoidsAppServiceNamespace(t *testing.T) {
	fake := newFakeOIDC(t)
	dir := t.TempDir()
	reg := `id: bridge
url: null
as_token: sso-review-as
hs_token: sso-review-hs
sender_localpart: _bridge_bot
rate_limited: false
namespaces:
  users:
    - exclusive: true
      regex: "@_bridge_.*:localhost"
  aliases: []
  rooms: []
`
	if err := os.WriteFile(filepath.Join(dir, "bridge.yaml"), []byte(reg), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := testserver.Start(t, storage.SQLite, func(c *config.Config) {
		ssoConfig(fake)(c)
		c.AppService.ConfigFiles = []string{dir}
	})
	fake.set(func(f *fakeOIDC) { f.username = "_bridge_alice" })
	b := newBrowser(t)
	st, page, confirmation := b.callback(b.start(srv, ssoRedirectPath))
	if st != http.StatusConflict || confirmation != "" {
		t.Fatalf("a sign-in mapped into an application service's namespace: %d %s", st, page)
	}
}

// The m.login.sso stage ends with its UIA session: a session past
// uiaSessionLifetime (30 minutes) is refused at the fallback page, when
// the browser comes back from the provider, and at the confirmation.
func TestSSOUserInteractiveAuthExpiry(t *testing.T) {
	fake := newFakeOIDC(t)
	srv := testserver.Start(t, storage.SQLite, ssoConfig(fake))
	ctx := context.Background()
	cli := client(t, srv, "", "")
	if _, err := cli.Login(ctx, &mautrix.ReqLogin{Type: mautrix.AuthTypeToken,
		Token: newBrowser(t).login(srv, ssoRedirectPath), StoreCredentials: true}); err != nil {
		t.Fatal(err)
	}
	newSession := func() string {
		t.Helper()
		st, body := call(t, "POST", srv.URL+"/_matrix/client/v3/delete_devices", cli.AccessToken,
			map[string]any{"devices": []string{"NOSUCHDEVICE"}})
		session, _ := body["session"].(string)
		if st != 401 || session == "" {
			t.Fatalf("challenge: %d %v", st, body)
		}
		return session
	}
	age := func(session string) {
		t.Helper()
		err := srv.HS.DB.Write(ctx, func(tx storage.Tx) error {
			_, err := tx.Exec(ctx, `UPDATE uia_sessions SET created_ts = $1 WHERE session_id = $2`,
				time.Now().Add(-31*time.Minute).UnixMilli(), session)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	fallback := func(session string) string {
		return srv.URL + "/_matrix/client/v3/auth/m.login.sso/fallback/web?session=" + url.QueryEscape(session)
	}
	toProvider := func(br *browser, session string) string {
		t.Helper()
		st, h, page := br.get(fallback(session))
		if st != http.StatusFound {
			t.Fatalf("fallback page: %d %s", st, page)
		}
		st, h, page = br.get(h.Get("Location"))
		if st != http.StatusFound {
			t.Fatalf("provider: %d %s", st, page)
		}
		return h.Get("Location")
	}

	// At the fallback page.
	session := newSession()
	age(session)
	if st, _, page := newBrowser(t).get(fallback(session)); st != http.StatusBadRequest {
		t.Fatalf("fallback page of an expired session: %d %s", st, page)
	}
	// Back from the provider.
	session = newSession()
	br := newBrowser(t)
	callback := toProvider(br, session)
	age(session)
	if st, page, confirmation := br.callback(callback); st != http.StatusBadRequest || confirmation != "" {
		t.Fatalf("callback of an expired session: %d %s", st, page)
	}
	// At the confirmation.
	session = newSession()
	br = newBrowser(t)
	st, page, confirmation := br.callback(toProvider(br, session))
	if st != http.StatusOK || confirmation == "" {
		t.Fatalf("callback: %d %s", st, page)
	}
	age(session)
	st, _, page = br.postForm(srv.URL+ssoConfirmPath, url.Values{"confirmation": {confirmation}})
	if st != http.StatusBadRequest || strings.Contains(page, "authDone") {
		t.Fatalf("confirmation of an expired session: %d %s", st, page)
	}
	var completed string
	if err := srv.HS.DB.Reader().QueryRow(ctx, `SELECT completed FROM uia_sessions WHERE session_id = $1`, session).Scan(&completed); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(completed, "m.login.sso") {
		t.Fatalf("the expired session's stage was marked completed: %s", completed)
	}
}

// Security case 29: each start of a sign-in writes a row, so starts are
// limited like logins, per client IP: 429 M_LIMIT_EXCEEDED.
func TestSSORedirectRateLimited(t *testing.T) {
	fake := newFakeOIDC(t)
	srv := testserver.Start(t, storage.SQLite, func(c *config.Config) {
		ssoConfig(fake)(c)
		c.ClientAPI.RateLimits.Enabled = true
		c.ClientAPI.RateLimits.Login = config.RateLimit{PerSecond: 0.01, Burst: 2}
	})
	u := srv.URL + ssoRedirectPath + "?redirectUrl=" + url.QueryEscape(clientRedirect)
	for i := range 2 {
		if st, _, page := newBrowser(t).get(u); st != http.StatusFound {
			t.Fatalf("start %d: %d %s", i, st, page)
		}
	}
	st, body := call(t, "GET", u, "", nil)
	expectError(t, "third start", st, body, 429, "M_LIMIT_EXCEEDED")
}

// Two first sign-ins of one subject at once (two tabs, a double click)
// end in one account: the one that loses the race to map the subject
// reads the winner's mapping (errSSOMappingRace) instead of failing. On
// PostgreSQL the transactions really overlap; SQLite's one writer runs
// them one after the other.
func TestSSOConcurrentFirstLogins(t *testing.T) {
	fake := newFakeOIDC(t)
	testserver.ForEachEngine(t, ssoConfig(fake), func(t *testing.T, srv *testserver.Server) {
		fake.reset()
		const n = 8
		browsers, callbacks := make([]*browser, n), make([]string, n)
		for i := range n {
			browsers[i] = newBrowser(t)
			callbacks[i] = browsers[i].start(srv, ssoRedirectPath)
		}
		type outcome struct {
			st                 int
			page, confirmation string
		}
		outcomes := make([]outcome, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				resp, err := browsers[i].c.Get(callbacks[i])
				if err != nil {
					outcomes[i].page = err.Error()
					return
				}
				defer resp.Body.Close()
				body, _ := io.ReadAll(resp.Body)
				outcomes[i].st, outcomes[i].page = resp.StatusCode, string(body)
				if m := confirmationField.FindStringSubmatch(outcomes[i].page); m != nil {
					outcomes[i].confirmation = html.UnescapeString(m[1])
				}
			})
		}
		wg.Wait()
		for i, o := range outcomes {
			if o.st != http.StatusOK || o.confirmation == "" || !strings.Contains(o.page, "@alice:localhost") {
				t.Fatalf("sign-in %d: %d %s", i, o.st, o.page)
			}
		}
		if !available(t, srv, "alice2") {
			t.Fatal("a second account was made for the same subject")
		}
	})
}

// An account made by a first sign-in has no password (password_hash
// ”): m.login.password never logs it in, with an empty password or any
// other.
func TestSSOAccountHasNoPassword(t *testing.T) {
	fake := newFakeOIDC(t)
	srv := testserver.Start(t, storage.SQLite, ssoConfig(fake))
	tokenLogin(t, srv, newBrowser(t).login(srv, ssoRedirectPath), "@alice:localhost")
	for _, password := range []string{"", "x", "myelin-dummy-password"} {
		st, body := call(t, "POST", srv.URL+"/_matrix/client/v3/login", "", map[string]any{
			"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": "alice"}, "password": password,
		})
		expectError(t, "password "+password, st, body, 403, "M_FORBIDDEN")
	}
}

// Keys of the provider's JWKS that Myelin must not verify an ID token
// with: an RSA key of fewer than 2048 bits, and a key published for
// encryption (use "enc", RFC 7517 section 4.2). Each is the provider's
// error page.
func TestSSOUnusableProviderKeys(t *testing.T) {
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	b64 := func(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
	jwk := func(kid, use string, k *rsa.PrivateKey) map[string]any {
		return map[string]any{"kty": "RSA", "kid": kid, "use": use, "alg": "RS256",
			"n": b64(k.N.Bytes()), "e": b64(big.NewInt(int64(k.E)).Bytes())}
	}
	for _, tc := range []struct {
		name string
		set  func(f *fakeOIDC)
	}{
		{"1024-bit RSA key", func(f *fakeOIDC) {
			f.extraJWKs = []map[string]any{jwk("rsa-small", "sig", small)}
			f.rsaSigner, f.rsaKid = small, "rsa-small"
		}},
		{"encryption key", func(f *fakeOIDC) {
			f.extraJWKs = []map[string]any{jwk("rsa-enc", "enc", f.rsaKey)}
			f.rsaKid = "rsa-enc"
		}},
	} {
		// A server each: the JWKS is read once and kept.
		fake := newFakeOIDC(t)
		fake.set(tc.set)
		srv := testserver.Start(t, storage.SQLite, ssoConfig(fake))
		b := newBrowser(t)
		st, page, confirmation := b.callback(b.start(srv, ssoRedirectPath))
		if st != http.StatusBadGateway || confirmation != "" {
			t.Errorf("%s: %d (want 502) %s", tc.name, st, page)
		}
	}
}
