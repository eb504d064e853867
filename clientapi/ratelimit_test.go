package clientapi_test

import (
	"fmt"
	"testing"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
)

func limited(trusted ...string) func(*config.Config) {
	return func(c *config.Config) {
		c.ClientAPI.RateLimits.Enabled = true
		c.ClientAPI.RateLimits.Register = config.RateLimit{PerSecond: 0.01, Burst: 2}
		c.ClientAPI.RateLimits.Login = config.RateLimit{PerSecond: 0.01, Burst: 2}
		c.Global.TrustedProxies = trusted
	}
}

// Security case 29: a client cannot dodge the per-IP limits by forging
// X-Forwarded-For; the limited answer is 429 M_LIMIT_EXCEEDED with
// retry_after_ms.
func TestRateLimitIgnoresForgedForwardedFor(t *testing.T) {
	srv := testserver.Start(t, "sqlite", limited())
	for _, path := range []string{"/_matrix/client/v3/register", "/_matrix/client/v3/login"} {
		var st int
		var body map[string]any
		for i := range 3 {
			st, body = call(t, "POST", srv.URL+path, "", map[string]any{"type": "m.login.password"},
				"X-Forwarded-For", fmt.Sprintf("203.0.113.%d", i+1))
		}
		expectError(t, path+" third request", st, body, 429, "M_LIMIT_EXCEEDED")
		if ms, ok := body["retry_after_ms"].(float64); !ok || ms <= 0 {
			t.Fatalf("%s: retry_after_ms = %v", path, body["retry_after_ms"])
		}
	}
}

// Behind a trusted proxy, the forwarded address is the key: distinct
// clients do not share a bucket, the same client is still limited.
func TestRateLimitBehindTrustedProxy(t *testing.T) {
	srv := testserver.Start(t, "sqlite", limited("127.0.0.1"))
	url := srv.URL + "/_matrix/client/v3/login"
	for i := range 4 {
		st, body := call(t, "POST", url, "", map[string]any{"type": "m.login.password", "user": "x", "password": "y"},
			"X-Forwarded-For", fmt.Sprintf("203.0.113.%d", i+1))
		if st == 429 {
			t.Fatalf("distinct forwarded clients were limited together: %v", body)
		}
	}
	var st int
	var body map[string]any
	for range 3 {
		st, body = call(t, "POST", url, "", map[string]any{"type": "m.login.password", "user": "x", "password": "y"},
			"X-Forwarded-For", "198.51.100.7")
	}
	expectError(t, "same forwarded client", st, body, 429, "M_LIMIT_EXCEEDED")
}
