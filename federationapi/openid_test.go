package federationapi_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"testing"

	"maunium.net/go/mautrix"

	"github.com/myelin-chat/myelin/storage"
)

// TestOpenIDTokenExchange: alice on A asks for an OpenID token; a third
// party (no X-Matrix signature) exchanges it at A's federation API for
// her user ID, until it expires. The token is nothing else: not an
// access token, and an access token is not an OpenID token.
func TestOpenIDTokenExchange(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a := n.start()
		ctx := context.Background()
		alice, bob := a.register("alice"), a.register("bob")

		tok, err := alice.cli.RequestOpenIDToken(ctx)
		if err != nil {
			t.Fatalf("request_token: %v", err)
		}
		if tok.TokenType != "Bearer" || tok.MatrixServerName != a.Name || tok.ExpiresIn != 3600 || tok.AccessToken == "" {
			t.Fatalf("request_token answer: %+v", tok)
		}
		userinfo := func(token string) (int, map[string]string) {
			t.Helper()
			resp, err := n.httpClient().Get("https://" + a.Name + "/_matrix/federation/v1/openid/userinfo?access_token=" + url.QueryEscape(token))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			data, _ := io.ReadAll(resp.Body)
			var body map[string]string
			_ = json.Unmarshal(data, &body)
			return resp.StatusCode, body
		}
		if status, body := userinfo(tok.AccessToken); status != http.StatusOK || body["sub"] != string(alice.id()) {
			t.Fatalf("userinfo: %d %v", status, body)
		}
		for name, token := range map[string]string{
			"unknown token": "myo_nothing", "access token": alice.cli.AccessToken, "empty": "",
		} {
			if status, body := userinfo(token); status != http.StatusUnauthorized || body["errcode"] != "M_UNKNOWN_TOKEN" {
				t.Errorf("userinfo with %s: %d %v", name, status, body)
			}
		}
		// The OpenID token is not an access token.
		other, _ := mautrix.NewClient("https://"+a.Name, alice.id(), tok.AccessToken)
		other.Client = n.httpClient()
		if _, err := other.Whoami(ctx); !httpStatusIs(err, http.StatusUnauthorized) {
			t.Errorf("whoami with an OpenID token: %v", err)
		}
		// Only for oneself.
		u := bob.cli.BuildClientURL("v3", "user", alice.id(), "openid", "request_token")
		if _, err := bob.cli.MakeRequest(ctx, http.MethodPost, u, struct{}{}, nil); !httpStatusIs(err, http.StatusForbidden) {
			t.Errorf("bob requesting alice's OpenID token: %v", err)
		}
		// Expired tokens are unknown.
		err = a.HS.DB.Write(ctx, func(tx storage.Tx) error {
			_, err := tx.Exec(ctx, `UPDATE openid_tokens SET expires_ts = $1`, int64(1))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if status, body := userinfo(tok.AccessToken); status != http.StatusUnauthorized || body["errcode"] != "M_UNKNOWN_TOKEN" {
			t.Errorf("userinfo with an expired token: %d %v", status, body)
		}
	})
}
