package config

import (
	"strings"
	"testing"
)

func TestFederationValidate(t *testing.T) {
	cases := []struct {
		name string
		f    Federation
		want string // substring of the error; "" means valid
	}{
		{"off", Federation{}, ""},
		{"listener with files", Federation{Listen: ":8448", TLSCert: "a.crt", TLSKey: "a.key"}, ""},
		{"listener from CA", Federation{Listen: ":8448", TLSCert: "a.crt", TLSKey: "a.key", TLSCACert: "ca.crt", TLSCAKey: "ca.key"}, ""},
		{"listener without files", Federation{Listen: ":8448"}, "federation_api.tls_cert"},
		{"bad listen", Federation{Listen: "8448", TLSCert: "a", TLSKey: "b"}, "federation_api.listen"},
		{"CA cert without key", Federation{TLSCert: "a", TLSKey: "b", TLSCACert: "ca.crt"}, "tls_ca_cert and tls_ca_key must be set together"},
		{"CA without target files", Federation{TLSCACert: "ca.crt", TLSCAKey: "ca.key"}, "is empty while tls_ca_cert is set"},
	}
	for _, tc := range cases {
		err := tc.f.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: unexpected error %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.want)
		}
	}
}

func TestFederationEnv(t *testing.T) {
	cfg, err := Parse(nil, []string{
		"MYELIN_FEDERATION_API_LISTEN=:8448",
		"MYELIN_FEDERATION_API_TLS_CERT=/data/fed.crt",
		"MYELIN_FEDERATION_API_TLS_KEY=/data/fed.key",
		"MYELIN_FEDERATION_API_TLS_CA_CERT=/complement/ca/ca.crt",
		"MYELIN_FEDERATION_API_TLS_CA_KEY=/complement/ca/ca.key",
		"MYELIN_FEDERATION_API_TRUSTED_CA_FILE=/complement/ca/ca.crt",
	})
	if err != nil {
		t.Fatal(err)
	}
	f := cfg.Federation
	if f.Listen != ":8448" || f.TLSCACert != "/complement/ca/ca.crt" || f.TLSCAKey != "/complement/ca/ca.key" || f.TrustedCAFile != "/complement/ca/ca.crt" {
		t.Fatalf("env overrides not applied: %+v", f)
	}
}
