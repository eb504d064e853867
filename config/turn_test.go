package config

import (
	"slices"
	"testing"
	"time"
)

// TestTURNConfig: URIs must be turn:/turns: ones, with either a shared
// secret or a username and password (not both), and the environment
// overrides each field.
func TestTURNConfig(t *testing.T) {
	uris := []string{"turn:turn.example.com:3478?transport=udp"}
	for _, tc := range []struct {
		name string
		turn TURN
		ok   bool
	}{
		{"off", TURN{}, true},
		{"shared secret", TURN{URIs: uris, SharedSecret: "s"}, true},
		{"fixed", TURN{URIs: []string{"turns:t.example.com:5349"}, Username: "u", Password: "p"}, true},
		{"stun URI", TURN{URIs: []string{"stun:t.example.com"}, SharedSecret: "s"}, false},
		{"no credentials", TURN{URIs: uris}, false},
		{"both kinds", TURN{URIs: uris, SharedSecret: "s", Username: "u", Password: "p"}, false},
		{"username alone", TURN{URIs: uris, Username: "u"}, false},
		{"secret without URIs", TURN{SharedSecret: "s"}, false},
		{"zero ttl", TURN{URIs: uris, SharedSecret: "s", TTL: -1}, false},
	} {
		c := TURN{}.Defaults()
		ttl := c.TTL
		c = tc.turn
		if c.TTL == 0 {
			c.TTL = ttl
		}
		if err := c.Validate(); (err == nil) != tc.ok {
			t.Errorf("%s: Validate() = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
	cfg, err := Parse(nil, []string{
		"MYELIN_CLIENT_API_TURN_URIS=turn:a.example.com:3478?transport=udp, turns:a.example.com:5349",
		"MYELIN_CLIENT_API_TURN_SHARED_SECRET=env-secret",
		"MYELIN_CLIENT_API_TURN_TTL=2h",
		"MYELIN_CLIENT_API_TURN_ALLOW_GUESTS=true",
	})
	turn := cfg.ClientAPI.TURN
	if err != nil || !slices.Equal(turn.URIs, []string{"turn:a.example.com:3478?transport=udp", "turns:a.example.com:5349"}) ||
		turn.SharedSecret != "env-secret" || turn.TTL != Duration(2*time.Hour) || !turn.AllowGuests {
		t.Errorf("env override: %+v, %v", turn, err)
	}
	if d := (TURN{}).Defaults(); d.TTL != Duration(24*time.Hour) || d.AllowGuests {
		t.Errorf("defaults: %+v", d)
	}
}
