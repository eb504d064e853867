package clientapi

import (
	"testing"
	"time"

	"github.com/myelin-chat/myelin/config"
)

// TestTurnCredentialsHMAC checks the shared-secret credentials against a
// value computed outside Go, for the username 1700086400:@alice:localhost
// and the secret coturn-static-auth-secret:
//
//	echo -n '1700086400:@alice:localhost' | openssl dgst -sha1 -hmac 'coturn-static-auth-secret' -binary | base64
//
// (and Python's hmac/hashlib/base64 gave the same). Fixed credentials are
// handed out unchanged.
func TestTurnCredentialsHMAC(t *testing.T) {
	now := time.Unix(1700000000, 0)
	turn := config.TURN{URIs: []string{"turn:turn.example.com:3478?transport=udp"},
		SharedSecret: "coturn-static-auth-secret", TTL: config.Duration(24 * time.Hour)}
	got := turnCredentials(turn, "@alice:localhost", now)
	want := turnServerResponse{Username: "1700086400:@alice:localhost", Password: "Uf0s66vYSPuXQwyEhvwn2xkHfMs=",
		URIs: turn.URIs, TTL: 86400}
	if got.Username != want.Username || got.Password != want.Password || got.TTL != want.TTL || len(got.URIs) != 1 || got.URIs[0] != turn.URIs[0] {
		t.Errorf("shared secret: %+v, want %+v", got, want)
	}

	fixed := config.TURN{URIs: []string{"turns:turn.example.com:5349"}, Username: "u", Password: "p", TTL: config.Duration(90 * time.Second)}
	got = turnCredentials(fixed, "@alice:localhost", now)
	if got.Username != "u" || got.Password != "p" || got.TTL != 90 || len(got.URIs) != 1 {
		t.Errorf("fixed credentials: %+v", got)
	}
}
