package config

import (
	"strings"
	"testing"
	"time"
)

func TestSampleRoundTrips(t *testing.T) {
	sample := Sample(Defaults())
	cfg, err := Parse(sample, nil)
	if err != nil {
		t.Fatalf("the generated sample does not parse: %v", err)
	}
	if cfg.Global.ServerName != "localhost" || cfg.HTTP.Listen != "127.0.0.1:8008" || cfg.ClientAPI.Registration != "token" {
		t.Errorf("sample did not keep defaults: %+v", cfg)
	}
	// Every leaf field is documented and names its environment variable.
	for _, want := range []string{"# env: MYELIN_GLOBAL_SERVER_NAME", "# env: MYELIN_CLIENT_API_RATE_LIMITS_LOGIN_BURST", "# env: MYELIN_DATABASE_POSTGRES_URL"} {
		if !strings.Contains(string(sample), want) {
			t.Errorf("sample lacks %q", want)
		}
	}
}

func TestUnknownKeyIsAnError(t *testing.T) {
	_, err := Parse([]byte("global:\n  server_nam: example.org\n"), nil)
	if err == nil || !strings.Contains(err.Error(), "server_nam") {
		t.Fatalf("unknown key: err = %v, want an error naming server_nam", err)
	}
}

func TestEnvironmentOverrides(t *testing.T) {
	cfg, err := Parse([]byte("global:\n  server_name: file.example\n"), []string{
		"MYELIN_GLOBAL_SERVER_NAME=env.example",
		"MYELIN_CLIENT_API_REGISTRATION=open",
		"MYELIN_CLIENT_API_RATE_LIMITS_ENABLED=false",
		"MYELIN_CLIENT_API_RATE_LIMITS_LOGIN_PER_SECOND=2.5",
		"MYELIN_HTTP_SHUTDOWN_TIMEOUT=3s",
		"MYELIN_GLOBAL_TRUSTED_PROXIES=10.0.0.0/8, 127.0.0.1",
		"UNRELATED=1",
	})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Global.ServerName != "env.example" {
		t.Errorf("server_name = %q, env should win over the file", cfg.Global.ServerName)
	}
	if cfg.ClientAPI.Registration != "open" || cfg.ClientAPI.RateLimits.Enabled || cfg.ClientAPI.RateLimits.Login.PerSecond != 2.5 {
		t.Errorf("client_api overrides not applied: %+v", cfg.ClientAPI)
	}
	if cfg.HTTP.ShutdownTimeout.D() != 3*time.Second {
		t.Errorf("shutdown_timeout = %v", cfg.HTTP.ShutdownTimeout.D())
	}
	if len(cfg.Global.TrustedProxies) != 2 || cfg.Global.TrustedProxies[1] != "127.0.0.1" {
		t.Errorf("trusted_proxies = %v", cfg.Global.TrustedProxies)
	}

	_, err = Parse(nil, []string{"MYELIN_HTTP_MAX_BODY_BYTES=lots"})
	if err == nil || !strings.Contains(err.Error(), "MYELIN_HTTP_MAX_BODY_BYTES") {
		t.Errorf("bad env value: err = %v, want it named", err)
	}
}

func TestValidateNamesFieldAndFix(t *testing.T) {
	cases := []struct {
		yaml, field, fix string
	}{
		{"global:\n  server_name: 'bad name!'\n", "global.server_name", "e.g. example.org"},
		{"database:\n  engine: mysql\n", "database.engine", "use sqlite or postgres"},
		{"database:\n  engine: postgres\n", "database.postgres_url", "connection string"},
		{"http:\n  listen: nope\n", "http.listen", "127.0.0.1:8008"},
		{"http:\n  max_body_bytes: 10\n", "http.max_body_bytes", "at least"},
		{"client_api:\n  registration: maybe\n", "client_api.registration", "token, open or closed"},
		{"logging:\n  level: loud\n", "logging.level", "debug, info, warn or error"},
		{"room_server:\n  default_room_version: '13'\n", "room_server.default_room_version", "1 to 12"},
		{"global:\n  trusted_proxies: [not-an-ip]\n", "global.trusted_proxies", "10.0.0.0/8"},
	}
	for _, c := range cases {
		_, err := Parse([]byte(c.yaml), nil)
		if err == nil {
			t.Errorf("%q: accepted", c.yaml)
			continue
		}
		if !strings.Contains(err.Error(), c.field) || !strings.Contains(err.Error(), c.fix) {
			t.Errorf("%q: error %q should name %s and say %q", c.yaml, err, c.field, c.fix)
		}
	}
}
