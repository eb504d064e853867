package config

import (
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
)

// SSO configures single sign-on: Myelin as an OpenID Connect relying
// party of upstream providers, offered to clients as m.login.sso.
// Spec: client-server-api, "SSO client login/authentication".
type SSO struct {
	Providers          []OIDCProvider `yaml:"oidc_providers" doc:"The OpenID Connect providers offered as m.login.sso identity providers; empty turns SSO off. Each entry has: id (the identity provider ID clients see: 1-255 of A-Z a-z 0-9 - . _ ~); name (shown to the user); icon (optional mxc:// URI); brand (optional, e.g. github, gitlab, google, apple, facebook, twitter); issuer (the provider's issuer URL, https except on a loopback address; {issuer}/.well-known/openid-configuration is read and its issuer must match exactly); client_id and client_secret (from registering Myelin at the provider, with the redirect URI <global.public_baseurl>/_myelin/client/oidc/callback); client_auth_method (client_secret_basic, the default, or client_secret_post); scopes (openid is always asked for; default openid profile); localpart_claim (the claim the new user's localpart comes from, default preferred_username; when it is missing or maps to nothing, the sub claim is used, mapped the same way: lower-cased, other characters written =xx); display_name_claim (default name; empty: none); userinfo (true: also read the userinfo endpoint, whose claims win over the ID token's); create_users (true: a first login creates the account even when client_api.registration is closed or token; with registration open it always does). A user is remembered by (id, sub): a changed username at the provider keeps the account. A new user whose localpart is taken (or reserved by an application service) gets 2, 3, ... appended. Not settable from the environment. Keep client_secret secret."`
	FlowLifetime       Duration       `yaml:"flow_lifetime" doc:"How long a browser has to come back from the provider after /login/sso/redirect, and then to confirm on Myelin's page that the client may have the login."`
	LoginTokenLifetime Duration       `yaml:"login_token_lifetime" doc:"How long the single-use m.login.token handed to the client's redirectUrl stays valid (the spec suggests a few seconds; the client exchanges it at once)."`
	DiscoveryCacheTTL  Duration       `yaml:"discovery_cache_ttl" doc:"How long a provider's discovery document and signing keys (JWKS) are kept before they are read again. A failed read is not kept: the next login tries again. An ID token signed by a key not in the kept set makes Myelin read the JWKS again at once (at most every 10 s)."`
}

func (SSO) Defaults() SSO {
	return SSO{
		Providers:          []OIDCProvider{},
		FlowLifetime:       Duration(10 * time.Minute),
		LoginTokenLifetime: Duration(30 * time.Second),
		DiscoveryCacheTTL:  Duration(time.Hour),
	}
}

// OIDCProvider is one upstream OpenID Connect provider. Empty optional
// fields take their defaults through the methods below (list entries
// get no Defaults()).
type OIDCProvider struct {
	ID               string   `yaml:"id"`
	Name             string   `yaml:"name"`
	Icon             string   `yaml:"icon"`
	Brand            string   `yaml:"brand"`
	Issuer           string   `yaml:"issuer"`
	ClientID         string   `yaml:"client_id"`
	ClientSecret     string   `yaml:"client_secret"`
	ClientAuthMethod string   `yaml:"client_auth_method"`
	Scopes           []string `yaml:"scopes"`
	LocalpartClaim   string   `yaml:"localpart_claim"`
	DisplayNameClaim *string  `yaml:"display_name_claim"`
	UserInfo         bool     `yaml:"userinfo"`
	CreateUsers      bool     `yaml:"create_users"`
}

// Client authentication methods at the token endpoint (OpenID Connect
// Core 1.0, section 9).
const (
	ClientSecretBasic = "client_secret_basic"
	ClientSecretPost  = "client_secret_post"
)

// AuthMethod is the client authentication method, client_secret_basic
// unless set.
func (p OIDCProvider) AuthMethod() string {
	if p.ClientAuthMethod == "" {
		return ClientSecretBasic
	}
	return p.ClientAuthMethod
}

// ScopeList is the scopes to ask for: openid first, always, then the
// configured ones (profile when none are).
func (p OIDCProvider) ScopeList() []string {
	scopes := []string{"openid"}
	configured := p.Scopes
	if len(configured) == 0 {
		configured = []string{"profile"}
	}
	for _, s := range configured {
		if s != "openid" {
			scopes = append(scopes, s)
		}
	}
	return scopes
}

// LocalpartClaimName is the claim new localparts come from.
func (p OIDCProvider) LocalpartClaimName() string {
	if p.LocalpartClaim == "" {
		return "preferred_username"
	}
	return p.LocalpartClaim
}

// DisplayNameClaimName is the claim display names come from; "" for none.
func (p OIDCProvider) DisplayNameClaimName() string {
	if p.DisplayNameClaim == nil {
		return "name"
	}
	return *p.DisplayNameClaim
}

func (s SSO) Validate() error {
	var errs []error
	seen := map[string]bool{}
	for i, p := range s.Providers {
		field := fmt.Sprintf("client_api.sso.oidc_providers[%d]", i)
		if !validOpaqueID(p.ID) {
			errs = append(errs, fieldError(field+".id", fmt.Sprintf("%q is not a valid identity provider ID", p.ID), "use 1-255 of A-Z a-z 0-9 - . _ ~, e.g. com.example.keycloak"))
		} else if seen[p.ID] {
			errs = append(errs, fieldError(field+".id", fmt.Sprintf("%q is used twice", p.ID), "give each provider its own id"))
		}
		seen[p.ID] = true
		if strings.TrimSpace(p.Name) == "" {
			errs = append(errs, fieldError(field+".name", "is empty", "the name users see, e.g. Keycloak"))
		}
		if p.Icon != "" && !strings.HasPrefix(p.Icon, "mxc://") {
			errs = append(errs, fieldError(field+".icon", "is not an mxc:// URI", "upload the image and use its mxc:// URI"))
		}
		if p.Brand != "" && !validBrand(p.Brand) {
			errs = append(errs, fieldError(field+".brand", fmt.Sprintf("%q is not a brand", p.Brand), "use lower-case letters, digits and . _ -, e.g. gitlab"))
		}
		if err := validIssuer(p.Issuer); err != nil {
			errs = append(errs, fieldError(field+".issuer", err.Error(), "the provider's issuer URL, e.g. https://keycloak.example.com/realms/main"))
		}
		if p.ClientID == "" || p.ClientSecret == "" {
			errs = append(errs, fieldError(field, "client_id and client_secret are required", "register Myelin as a confidential client at the provider"))
		}
		switch p.AuthMethod() {
		case ClientSecretBasic, ClientSecretPost:
		default:
			errs = append(errs, fieldError(field+".client_auth_method", fmt.Sprintf("%q is not supported", p.ClientAuthMethod), "use client_secret_basic or client_secret_post"))
		}
	}
	if s.FlowLifetime < Duration(time.Minute) {
		errs = append(errs, fieldError("client_api.sso.flow_lifetime", "must be at least 1m", "e.g. 10m"))
	}
	if s.LoginTokenLifetime < Duration(time.Second) {
		errs = append(errs, fieldError("client_api.sso.login_token_lifetime", "must be at least 1s", "e.g. 30s"))
	}
	if s.DiscoveryCacheTTL < Duration(time.Minute) {
		errs = append(errs, fieldError("client_api.sso.discovery_cache_ttl", "must be at least 1m", "e.g. 1h"))
	}
	return joinErrs(errs)
}

// validOpaqueID follows the spec's opaque identifier grammar, which
// identity provider IDs should use. Spec: appendices, "Opaque
// Identifiers"; sso_login_flow.yaml, identity_providers.id.
func validOpaqueID(id string) bool {
	if len(id) < 1 || len(id) > 255 {
		return false
	}
	for _, c := range []byte(id) {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || strings.IndexByte("-._~", c) >= 0) {
			return false
		}
	}
	return true
}

// validBrand follows the common namespaced identifier grammar without
// its namespace requirement, as identity_providers.brand allows.
// Spec: sso_login_flow.yaml, brand; appendices, "Common Namespaced
// Identifier Grammar".
func validBrand(b string) bool {
	if len(b) < 1 || len(b) > 255 || !(b[0] >= 'a' && b[0] <= 'z') {
		return false
	}
	for _, c := range []byte(b) {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || strings.IndexByte("-._", c) >= 0) {
			return false
		}
	}
	return true
}

// validIssuer requires an https URL without query or fragment (OpenID
// Connect Discovery 1.0, section 2), or http on a loopback address for
// a provider on the same machine.
func validIssuer(issuer string) error {
	u, err := url.Parse(issuer)
	if err != nil || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("%q is not an issuer URL", issuer)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		host := u.Hostname()
		if ip := net.ParseIP(host); host == "localhost" || ip != nil && ip.IsLoopback() {
			return nil
		}
	}
	return fmt.Errorf("%q is not https", issuer)
}
