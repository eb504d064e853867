package clientapi_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeOIDC is an OpenID Connect provider for tests: discovery, an
// authorization endpoint that signs in the configured user at once and
// redirects back with a code, a token endpoint (client_secret_basic or
// _post, PKCE S256 checked, codes single-use), a JWKS with an RSA and an
// EC key, and userinfo.
type fakeOIDC struct {
	srv          *httptest.Server
	clientID     string
	clientSecret string
	rsaKey       *rsa.PrivateKey
	ecKey        *ecdsa.PrivateKey

	mu sync.Mutex // guards the fields below
	// The user the next authorization signs in.
	sub, username, name string
	// alg is RS256 (default) or ES256; "none" sends an unsigned token.
	alg string
	// mutate, if set, edits the ID token's claims before signing.
	mutate func(claims map[string]any)
	// badSignature flips a bit of the signature.
	badSignature bool
	// header, if set, edits the ID token's JWS header after the
	// signing algorithm was chosen by alg.
	header func(header map[string]any)
	// signature, if set, replaces the ID token's signature bytes.
	signature func(sig []byte) []byte
	// discoveryEdit, if set, edits the discovery document.
	discoveryEdit func(doc map[string]any)
	// rsaSigner and rsaKid, if set, sign RS256 tokens instead of rsaKey
	// and name the key in the header; extraJWKs are published besides
	// the two keys.
	rsaSigner *rsa.PrivateKey
	rsaKid    string
	extraJWKs []map[string]any
	// discoveryFailures is how many discovery reads fail with 500.
	discoveryFailures int
	// discoveryIssuer, if set, is the issuer the discovery document names.
	discoveryIssuer string
	// refuse, if set, is the OAuth error the authorization answers with.
	refuse string
	// authMethod is the client authentication the token endpoint wants.
	authMethod string
	// userinfoClaims are added to the userinfo answer.
	userinfoClaims map[string]any
	codes          map[string]fakeGrant
	accessTokens   map[string]string // access token → sub
	discoveryReads int
}

type fakeGrant struct {
	nonce, challenge, redirectURI, sub, username, name string
}

var (
	fakeKeysOnce sync.Once
	fakeRSA      *rsa.PrivateKey
	fakeEC       *ecdsa.PrivateKey
)

func newFakeOIDC(t *testing.T) *fakeOIDC {
	t.Helper()
	fakeKeysOnce.Do(func() {
		var err error
		if fakeRSA, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if fakeEC, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			panic(err)
		}
	})
	f := &fakeOIDC{clientID: "myelin-client", clientSecret: "s3cret:&=", rsaKey: fakeRSA, ecKey: fakeEC}
	f.reset()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", f.discovery)
	mux.HandleFunc("GET /authorize", f.authorize)
	mux.HandleFunc("POST /token", f.token)
	mux.HandleFunc("GET /jwks", f.jwks)
	mux.HandleFunc("GET /userinfo", f.userinfo)
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

// reset forgets every knob and grant.
func (f *fakeOIDC) reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sub, f.username, f.name = "subject-1", "Alice", "Alice Liddell"
	f.alg, f.mutate, f.badSignature = "RS256", nil, false
	f.header, f.signature, f.discoveryEdit = nil, nil, nil
	f.rsaSigner, f.rsaKid, f.extraJWKs = nil, "", nil
	f.discoveryFailures, f.discoveryIssuer, f.refuse = 0, "", ""
	f.authMethod, f.userinfoClaims = "client_secret_basic", nil
	f.codes, f.accessTokens = map[string]fakeGrant{}, map[string]string{}
}

func (f *fakeOIDC) set(fn func(f *fakeOIDC)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeOIDC) issuer() string { return f.srv.URL }

func (f *fakeOIDC) discovery(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.discoveryReads++
	if f.discoveryFailures > 0 {
		f.discoveryFailures--
		http.Error(w, "down", http.StatusInternalServerError)
		return
	}
	iss := f.issuer()
	if f.discoveryIssuer != "" {
		iss = f.discoveryIssuer
	}
	doc := map[string]any{
		"issuer":                           iss,
		"authorization_endpoint":           f.srv.URL + "/authorize",
		"token_endpoint":                   f.srv.URL + "/token",
		"jwks_uri":                         f.srv.URL + "/jwks",
		"userinfo_endpoint":                f.srv.URL + "/userinfo",
		"response_types_supported":         []string{"code"},
		"code_challenge_methods_supported": []string{"S256"},
	}
	if f.discoveryEdit != nil {
		f.discoveryEdit(doc)
	}
	writeJSON(w, doc)
}

func (f *fakeOIDC) authorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	redirect, err := url.Parse(q.Get("redirect_uri"))
	if err != nil || q.Get("client_id") != f.clientID || q.Get("response_type") != "code" ||
		q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" || q.Get("nonce") == "" ||
		!strings.Contains(" "+q.Get("scope")+" ", " openid ") {
		http.Error(w, "bad authorization request: "+r.URL.RawQuery, http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	back := url.Values{"state": {q.Get("state")}}
	if f.refuse != "" {
		back.Set("error", f.refuse)
	} else {
		code := randomB64(16)
		f.codes[code] = fakeGrant{nonce: q.Get("nonce"), challenge: q.Get("code_challenge"), redirectURI: q.Get("redirect_uri"),
			sub: f.sub, username: f.username, name: f.name}
		back.Set("code", code)
	}
	f.mu.Unlock()
	redirect.RawQuery = back.Encode()
	http.Redirect(w, r, redirect.String(), http.StatusFound)
}

func (f *fakeOIDC) token(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	id, secret, basic := r.BasicAuth()
	if basic {
		id, _ = url.QueryUnescape(id)
		secret, _ = url.QueryUnescape(secret)
	} else {
		id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	}
	if id != f.clientID || secret != f.clientSecret || basic != (f.authMethod == "client_secret_basic") {
		w.WriteHeader(http.StatusUnauthorized)
		writeJSON(w, map[string]any{"error": "invalid_client"})
		return
	}
	code := r.PostForm.Get("code")
	grant, ok := f.codes[code]
	delete(f.codes, code) // single use
	sum := sha256.Sum256([]byte(r.PostForm.Get("code_verifier")))
	if !ok || r.PostForm.Get("grant_type") != "authorization_code" || r.PostForm.Get("redirect_uri") != grant.redirectURI ||
		base64.RawURLEncoding.EncodeToString(sum[:]) != grant.challenge {
		w.WriteHeader(http.StatusBadRequest)
		writeJSON(w, map[string]any{"error": "invalid_grant"})
		return
	}
	now := time.Now()
	claims := map[string]any{
		"iss": f.issuer(), "aud": f.clientID, "sub": grant.sub, "nonce": grant.nonce,
		"iat": now.Unix(), "exp": now.Add(5 * time.Minute).Unix(),
		"preferred_username": grant.username, "name": grant.name,
	}
	if f.mutate != nil {
		f.mutate(claims)
	}
	access := randomB64(16)
	f.accessTokens[access] = grant.sub
	writeJSON(w, map[string]any{"access_token": access, "token_type": "Bearer", "id_token": f.sign(claims)})
}

// sign makes a compact JWS of claims with the configured algorithm.
func (f *fakeOIDC) sign(claims map[string]any) string {
	header := map[string]any{"alg": f.alg, "typ": "JWT"}
	switch f.alg {
	case "RS256", "none":
		header["kid"] = "rsa-1"
		if f.rsaKid != "" {
			header["kid"] = f.rsaKid
		}
	case "ES256":
		header["kid"] = "ec-1"
	}
	if f.header != nil {
		f.header(header)
	}
	h, _ := json.Marshal(header)
	c, _ := json.Marshal(claims)
	input := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(c)
	digest := sha256.Sum256([]byte(input))
	var sig []byte
	switch f.alg {
	case "RS256":
		key := f.rsaKey
		if f.rsaSigner != nil {
			key = f.rsaSigner
		}
		sig, _ = rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, digest[:])
	case "ES256":
		r, s, _ := ecdsa.Sign(rand.Reader, f.ecKey, digest[:])
		sig = make([]byte, 64)
		r.FillBytes(sig[:32])
		s.FillBytes(sig[32:])
	}
	if f.badSignature && len(sig) > 0 {
		sig[len(sig)/2] ^= 1
	}
	if f.signature != nil {
		sig = f.signature(sig)
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func (f *fakeOIDC) jwks(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b64 := func(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
	pub := f.ecKey.PublicKey
	raw, _ := pub.Bytes() // 0x04 || X || Y
	keys := []map[string]any{
		{"kty": "RSA", "kid": "rsa-1", "use": "sig", "alg": "RS256",
			"n": b64(f.rsaKey.N.Bytes()), "e": b64(big.NewInt(int64(f.rsaKey.E)).Bytes())},
		{"kty": "EC", "kid": "ec-1", "use": "sig", "alg": "ES256", "crv": "P-256",
			"x": b64(raw[1:33]), "y": b64(raw[33:])},
	}
	writeJSON(w, map[string]any{"keys": append(keys, f.extraJWKs...)})
}

func (f *fakeOIDC) userinfo(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	sub, ok := f.accessTokens[strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")]
	if !ok {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	out := map[string]any{"sub": sub}
	for k, v := range f.userinfoClaims {
		out[k] = v
	}
	writeJSON(w, out)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func randomB64(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
