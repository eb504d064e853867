package clientapi

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/myelin-chat/myelin/config"
)

// This file is Myelin's side of OpenID Connect as a relying party: the
// provider's discovery document and keys, the authorization request,
// the code exchange and the verification of the ID token. Only the
// standard library: JWS RS256 and ES256 are all providers need, and a
// general JOSE library would bring algorithms (none, HS256 with a
// public key as secret) that must be refused anyway.
//
// References: OpenID Connect Core 1.0 (sections 3.1.2.1, 3.1.3, 5.3),
// OpenID Connect Discovery 1.0 (sections 3, 4), RFC 7636 (PKCE),
// RFC 7515/7517/7518 (JWS, JWK, JWA), RFC 6749 section 2.3.1.

const (
	// oidcResponseLimit bounds what is read from a provider.
	oidcResponseLimit = 1 << 20
	// oidcTimeout bounds each request to a provider.
	oidcTimeout = 10 * time.Second
	// jwksRefetchInterval bounds how often an ID token signed with an
	// unknown key makes Myelin read the JWKS again (key rotation).
	jwksRefetchInterval = 10 * time.Second
	// idTokenLeeway is the clock skew allowed on exp and iat.
	idTokenLeeway = time.Minute
)

// errProvider is a failure of the provider or of what it sent: the
// browser gets an error page saying the provider could not be used.
type errProvider struct{ msg string }

func (e *errProvider) Error() string { return e.msg }

func providerErr(format string, args ...any) error {
	return &errProvider{msg: fmt.Sprintf(format, args...)}
}

// oidcMetadata is the part of the discovery document Myelin uses.
// OpenID Connect Discovery 1.0, section 3.
type oidcMetadata struct {
	Issuer                string   `json:"issuer"`
	AuthorizationEndpoint string   `json:"authorization_endpoint"`
	TokenEndpoint         string   `json:"token_endpoint"`
	UserinfoEndpoint      string   `json:"userinfo_endpoint"`
	JWKSURI               string   `json:"jwks_uri"`
	CodeChallengeMethods  []string `json:"code_challenge_methods_supported"`
}

// oidcProvider is one configured provider with what was learnt of it.
type oidcProvider struct {
	cfg    config.OIDCProvider // immutable
	ttl    time.Duration       // immutable; discovery_cache_ttl
	client *http.Client        // immutable

	mu          sync.Mutex // guards the fields below; held while fetching
	meta        *oidcMetadata
	metaFetched time.Time
	keys        map[string]crypto.PublicKey // by kid ("" for a key without one)
	keysFetched time.Time
}

func newOIDCProvider(cfg config.OIDCProvider, ttl time.Duration) *oidcProvider {
	return &oidcProvider{cfg: cfg, ttl: ttl, client: &http.Client{Timeout: oidcTimeout}}
}

// metadata returns the discovery document, read again when older than
// the ttl. A failed read is not kept: the next call tries again.
func (p *oidcProvider) metadata(ctx context.Context) (*oidcMetadata, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.meta != nil && time.Since(p.metaFetched) < p.ttl {
		return p.meta, nil
	}
	// OpenID Connect Discovery 1.0, section 4: the issuer with
	// /.well-known/openid-configuration appended.
	var meta oidcMetadata
	if err := p.getJSON(ctx, strings.TrimSuffix(p.cfg.Issuer, "/")+"/.well-known/openid-configuration", "", &meta); err != nil {
		return nil, err
	}
	// Section 4.3: the issuer returned MUST be identical to the one
	// the configuration was fetched for.
	if meta.Issuer != p.cfg.Issuer {
		return nil, providerErr("the discovery document names issuer %q, not %q", meta.Issuer, p.cfg.Issuer)
	}
	for name, u := range map[string]string{"authorization_endpoint": meta.AuthorizationEndpoint, "token_endpoint": meta.TokenEndpoint, "jwks_uri": meta.JWKSURI} {
		if err := checkEndpoint(u); err != nil {
			return nil, providerErr("the discovery document's %s: %v", name, err)
		}
	}
	if meta.UserinfoEndpoint != "" {
		if err := checkEndpoint(meta.UserinfoEndpoint); err != nil {
			return nil, providerErr("the discovery document's userinfo_endpoint: %v", err)
		}
	}
	if p.cfg.UserInfo && meta.UserinfoEndpoint == "" {
		return nil, providerErr("userinfo is configured but the provider has no userinfo_endpoint")
	}
	// RFC 7636 is always used; a provider that lists its methods must
	// list S256.
	if meta.CodeChallengeMethods != nil && !slices.Contains(meta.CodeChallengeMethods, "S256") {
		return nil, providerErr("the provider does not support PKCE S256")
	}
	if !p.metaFetched.IsZero() && meta.JWKSURI != p.meta.JWKSURI {
		p.keys = nil
	}
	p.meta, p.metaFetched = &meta, time.Now()
	return p.meta, nil
}

// checkEndpoint accepts https URLs, and http ones on a loopback address.
func checkEndpoint(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return fmt.Errorf("%q is not a URL", raw)
	}
	if u.Scheme == "https" {
		return nil
	}
	if u.Scheme == "http" {
		if ip := net.ParseIP(u.Hostname()); u.Hostname() == "localhost" || ip != nil && ip.IsLoopback() {
			return nil
		}
	}
	return fmt.Errorf("%q is not https", raw)
}

// authorizationURL builds the authentication request (OpenID Connect
// Core 1.0, section 3.1.2.1) with PKCE S256 (RFC 7636, section 4.2).
func (p *oidcProvider) authorizationURL(meta *oidcMetadata, redirectURI, state, nonce, verifier string) string {
	challenge := sha256.Sum256([]byte(verifier))
	u, _ := url.Parse(meta.AuthorizationEndpoint) // checked by metadata
	q := u.Query()
	q.Set("response_type", "code")
	q.Set("client_id", p.cfg.ClientID)
	q.Set("redirect_uri", redirectURI)
	q.Set("scope", strings.Join(p.cfg.ScopeList(), " "))
	q.Set("state", state)
	q.Set("nonce", nonce)
	q.Set("code_challenge", base64.RawURLEncoding.EncodeToString(challenge[:]))
	q.Set("code_challenge_method", "S256")
	u.RawQuery = q.Encode()
	return u.String()
}

// tokenResponse is the token endpoint's answer (Core 1.0, 3.1.3.3).
type tokenResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	IDToken     string `json:"id_token"`
}

// exchange trades the authorization code for tokens at the token
// endpoint (Core 1.0, section 3.1.3.1), authenticating as configured.
func (p *oidcProvider) exchange(ctx context.Context, meta *oidcMetadata, code, redirectURI, verifier string) (*tokenResponse, error) {
	form := url.Values{
		"grant_type":    {"authorization_code"},
		"code":          {code},
		"redirect_uri":  {redirectURI},
		"code_verifier": {verifier},
	}
	if p.cfg.AuthMethod() == config.ClientSecretPost {
		form.Set("client_id", p.cfg.ClientID)
		form.Set("client_secret", p.cfg.ClientSecret)
	}
	ctx, cancel := context.WithTimeout(ctx, oidcTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, meta.TokenEndpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, providerErr("the token endpoint: %v", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if p.cfg.AuthMethod() == config.ClientSecretBasic {
		// RFC 6749, section 2.3.1: both are form-encoded first.
		req.SetBasicAuth(url.QueryEscape(p.cfg.ClientID), url.QueryEscape(p.cfg.ClientSecret))
	}
	var out tokenResponse
	if err := p.doJSON(req, &out); err != nil {
		return nil, err
	}
	if out.IDToken == "" {
		return nil, providerErr("the token endpoint returned no id_token")
	}
	return &out, nil
}

// userinfo reads the userinfo endpoint with the access token (Core 1.0,
// section 5.3). Its sub must be the ID token's (section 5.3.2).
func (p *oidcProvider) userinfo(ctx context.Context, meta *oidcMetadata, accessToken, subject string) (map[string]any, error) {
	var claims map[string]any
	if err := p.getJSON(ctx, meta.UserinfoEndpoint, accessToken, &claims); err != nil {
		return nil, err
	}
	if sub, _ := claims["sub"].(string); sub != subject {
		return nil, providerErr("the userinfo response is for another subject")
	}
	return claims, nil
}

func (p *oidcProvider) getJSON(ctx context.Context, u, bearer string, out any) error {
	ctx, cancel := context.WithTimeout(ctx, oidcTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return providerErr("%s: %v", u, err)
	}
	req.Header.Set("Accept", "application/json")
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	return p.doJSON(req, out)
}

// doJSON sends req and decodes a 200 JSON answer into out.
func (p *oidcProvider) doJSON(req *http.Request, out any) error {
	resp, err := p.client.Do(req)
	if err != nil {
		return providerErr("%s %s: %v", req.Method, req.URL.Redacted(), err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, oidcResponseLimit+1))
	if err != nil {
		return providerErr("%s %s: %v", req.Method, req.URL.Redacted(), err)
	}
	if len(body) > oidcResponseLimit {
		return providerErr("%s %s: the answer is larger than %d bytes", req.Method, req.URL.Redacted(), oidcResponseLimit)
	}
	if resp.StatusCode != http.StatusOK {
		// RFC 6749, section 5.2: the error code is safe to log; the
		// description may echo input, so only its code is kept.
		var e struct {
			Error string `json:"error"`
		}
		_ = json.Unmarshal(body, &e)
		return providerErr("%s %s answered %d %s", req.Method, req.URL.Redacted(), resp.StatusCode, e.Error)
	}
	if err := json.Unmarshal(body, out); err != nil {
		return providerErr("%s %s: the answer is not the expected JSON: %v", req.Method, req.URL.Redacted(), err)
	}
	return nil
}

// jwk is one key of a JWK set (RFC 7517 section 4, RFC 7518 section 6).
type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
	N   string `json:"n"`
	E   string `json:"e"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
}

// publicKey turns a signing key Myelin can use into a Go key; other keys
// (encryption keys, other curves, short RSA keys) give nil.
func (k jwk) publicKey() crypto.PublicKey {
	if k.Use != "" && k.Use != "sig" {
		return nil
	}
	switch k.Kty {
	case "RSA":
		n, err1 := base64.RawURLEncoding.DecodeString(k.N)
		e, err2 := base64.RawURLEncoding.DecodeString(k.E)
		if err1 != nil || err2 != nil || len(e) == 0 || len(e) > 4 {
			return nil
		}
		pub := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
		if pub.N.BitLen() < 2048 || pub.E < 3 {
			return nil
		}
		return pub
	case "EC":
		if k.Crv != "P-256" {
			return nil
		}
		x, err1 := base64.RawURLEncoding.DecodeString(k.X)
		y, err2 := base64.RawURLEncoding.DecodeString(k.Y)
		if err1 != nil || err2 != nil || len(x) != 32 || len(y) != 32 {
			return nil
		}
		pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
		if err != nil {
			return nil
		}
		return pub
	}
	return nil
}

// key returns the provider's signing key kid, reading the JWKS when it
// is older than the ttl, or when kid is unknown and the last read is
// more than jwksRefetchInterval old (the provider rotated its keys).
func (p *oidcProvider) key(ctx context.Context, meta *oidcMetadata, kid string) (crypto.PublicKey, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	age := time.Since(p.keysFetched)
	if p.keys != nil && age < p.ttl {
		if k := lookupKey(p.keys, kid); k != nil {
			return k, nil
		}
		if age < jwksRefetchInterval {
			return nil, providerErr("the ID token is signed with an unknown key %q", kid)
		}
	}
	var set struct {
		Keys []jwk `json:"keys"`
	}
	if err := p.getJSON(ctx, meta.JWKSURI, "", &set); err != nil {
		return nil, err
	}
	keys := map[string]crypto.PublicKey{}
	for _, k := range set.Keys {
		if pub := k.publicKey(); pub != nil {
			keys[k.Kid] = pub
		}
	}
	p.keys, p.keysFetched = keys, time.Now()
	if k := lookupKey(keys, kid); k != nil {
		return k, nil
	}
	return nil, providerErr("the ID token is signed with an unknown key %q", kid)
}

// lookupKey finds kid; a token without kid may use the set's only key.
func lookupKey(keys map[string]crypto.PublicKey, kid string) crypto.PublicKey {
	if k, ok := keys[kid]; ok {
		return k
	}
	if kid == "" && len(keys) == 1 {
		for _, k := range keys {
			return k
		}
	}
	return nil
}

// verifyIDToken checks the ID token's JWS signature (RS256 or ES256,
// with a key of the provider's JWKS) and its claims, as OpenID Connect
// Core 1.0, section 3.1.3.7 asks: iss is the issuer, aud holds the
// client ID (and azp names it when there are several audiences), exp is
// in the future, and nonce is the one sent. It returns the claims.
func (p *oidcProvider) verifyIDToken(ctx context.Context, meta *oidcMetadata, token, nonce string, now time.Time) (map[string]any, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, providerErr("the ID token is not a JWS in compact form")
	}
	rawHeader, err1 := base64.RawURLEncoding.DecodeString(parts[0])
	rawClaims, err2 := base64.RawURLEncoding.DecodeString(parts[1])
	sig, err3 := base64.RawURLEncoding.DecodeString(parts[2])
	if err := errors.Join(err1, err2, err3); err != nil {
		return nil, providerErr("the ID token is not valid base64url: %v", err)
	}
	var header struct {
		Alg  string `json:"alg"`
		Kid  string `json:"kid"`
		Crit []any  `json:"crit"`
	}
	if err := json.Unmarshal(rawHeader, &header); err != nil {
		return nil, providerErr("the ID token's header is not JSON")
	}
	if header.Crit != nil {
		// RFC 7515, section 4.1.11: unknown critical extensions fail.
		return nil, providerErr("the ID token has critical header extensions")
	}
	key, err := p.key(ctx, meta, header.Kid)
	if err != nil {
		return nil, err
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	// The algorithm must match the key's type: a header cannot make an
	// RSA key verify anything but RS256, nor pick "none" or HS256.
	switch pub := key.(type) {
	case *rsa.PublicKey:
		if header.Alg != "RS256" || rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig) != nil {
			return nil, providerErr("the ID token's signature does not verify")
		}
	case *ecdsa.PublicKey:
		// RFC 7518, section 3.4: R and S, 32 bytes each.
		if header.Alg != "ES256" || len(sig) != 64 ||
			!ecdsa.Verify(pub, digest[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
			return nil, providerErr("the ID token's signature does not verify")
		}
	default:
		return nil, providerErr("the ID token's key is of no supported type")
	}
	var claims map[string]any
	dec := json.NewDecoder(strings.NewReader(string(rawClaims)))
	dec.UseNumber()
	if err := dec.Decode(&claims); err != nil {
		return nil, providerErr("the ID token's claims are not a JSON object")
	}
	if iss, _ := claims["iss"].(string); iss != meta.Issuer {
		return nil, providerErr("the ID token's issuer is %q, not %q", iss, meta.Issuer)
	}
	if !audienceHolds(claims, p.cfg.ClientID) {
		return nil, providerErr("the ID token is not meant for this client")
	}
	exp, ok := numericDate(claims["exp"])
	if !ok || !now.Before(exp.Add(idTokenLeeway)) {
		return nil, providerErr("the ID token has expired")
	}
	if iat, ok := numericDate(claims["iat"]); ok && iat.After(now.Add(idTokenLeeway)) {
		return nil, providerErr("the ID token was issued in the future")
	}
	got, _ := claims["nonce"].(string)
	if subtle.ConstantTimeCompare([]byte(got), []byte(nonce)) != 1 {
		return nil, providerErr("the ID token's nonce is not the one sent")
	}
	if sub, _ := claims["sub"].(string); sub == "" || len(sub) > 255 {
		return nil, providerErr("the ID token has no valid sub")
	}
	return claims, nil
}

// audienceHolds reports whether aud (a string or an array) holds
// clientID and, when there are several audiences or an azp claim, azp
// is clientID (Core 1.0, 3.1.3.7 items 3–5).
func audienceHolds(claims map[string]any, clientID string) bool {
	found, several := false, false
	switch aud := claims["aud"].(type) {
	case string:
		found = aud == clientID
	case []any:
		several = len(aud) > 1
		for _, a := range aud {
			if s, _ := a.(string); s == clientID {
				found = true
			}
		}
	}
	azp, hasAZP := claims["azp"].(string)
	if (several || hasAZP) && azp != clientID {
		return false
	}
	return found
}

// numericDate reads a JWT NumericDate (RFC 7519, section 2).
func numericDate(v any) (time.Time, bool) {
	n, ok := v.(json.Number)
	if !ok {
		return time.Time{}, false
	}
	f, err := n.Float64()
	if err != nil {
		return time.Time{}, false
	}
	return time.Unix(int64(f), 0), true
}
