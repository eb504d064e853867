package config

import (
	"strings"
	"testing"
)

// client_api.sso.oidc_providers: each entry's id follows the opaque
// identifier grammar and is unique, the issuer is https (http only on a
// loopback address), a client secret is given, and the authentication
// method is one Myelin speaks.
func TestSSOValidate(t *testing.T) {
	good := OIDCProvider{ID: "com.example.kc", Name: "Keycloak", Issuer: "https://kc.example.com/realms/main",
		ClientID: "myelin", ClientSecret: "secret", Icon: "mxc://example.com/abc", Brand: "keycloak"}
	if err := (SSO{}).Defaults().withProviders(good).Validate(); err != nil {
		t.Fatalf("a good provider: %v", err)
	}
	loopback := good
	loopback.Issuer = "http://127.0.0.1:8080"
	if err := (SSO{}).Defaults().withProviders(loopback).Validate(); err != nil {
		t.Fatalf("a loopback http issuer: %v", err)
	}
	for _, tc := range []struct {
		name string
		edit func(p *OIDCProvider)
		want string
	}{
		{"bad id", func(p *OIDCProvider) { p.ID = "has space" }, ".id"},
		{"empty id", func(p *OIDCProvider) { p.ID = "" }, ".id"},
		{"no name", func(p *OIDCProvider) { p.Name = " " }, ".name"},
		{"http issuer", func(p *OIDCProvider) { p.Issuer = "http://kc.example.com" }, ".issuer"},
		{"issuer with query", func(p *OIDCProvider) { p.Issuer = "https://kc.example.com/?x=1" }, ".issuer"},
		{"no secret", func(p *OIDCProvider) { p.ClientSecret = "" }, "client_secret"},
		{"auth method", func(p *OIDCProvider) { p.ClientAuthMethod = "private_key_jwt" }, ".client_auth_method"},
		{"icon", func(p *OIDCProvider) { p.Icon = "https://example.com/icon.png" }, ".icon"},
		{"brand", func(p *OIDCProvider) { p.Brand = "Git Lab" }, ".brand"},
	} {
		p := good
		tc.edit(&p)
		err := (SSO{}).Defaults().withProviders(p).Validate()
		if err == nil || !strings.Contains(err.Error(), "oidc_providers[0]"+tc.want) && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want one naming %s", tc.name, err, tc.want)
		}
	}
	if err := (SSO{}).Defaults().withProviders(good, good).Validate(); err == nil || !strings.Contains(err.Error(), "used twice") {
		t.Errorf("duplicate ids: err = %v", err)
	}
	if scopes := good.ScopeList(); strings.Join(scopes, " ") != "openid profile" {
		t.Errorf("default scopes: %v", scopes)
	}
	withOpenID := good
	withOpenID.Scopes = []string{"email", "openid"}
	if scopes := withOpenID.ScopeList(); strings.Join(scopes, " ") != "openid email" {
		t.Errorf("scopes: %v", scopes)
	}
}

func (s SSO) withProviders(p ...OIDCProvider) SSO {
	s.Providers = p
	return s
}
