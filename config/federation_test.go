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

func TestOldVerifyKeys(t *testing.T) {
	const pub = "Noi6WqcDj0QmPxCNQqgezwTlBKrfqehY1u2FyWP9uYw"
	good := Federation{OldVerifyKeys: []string{"ed25519:a_old " + pub + " 1790000000000", "ed25519:older " + pub + "= 1780000000000"}}
	keys, err := good.ParseOldVerifyKeys()
	if err != nil || good.Validate() != nil {
		t.Fatalf("good entries: %v / %v", err, good.Validate())
	}
	if len(keys) != 2 || keys[0].KeyID != "ed25519:a_old" || len(keys[0].PublicKey) != 32 || keys[0].ExpiredTS != 1790000000000 ||
		keys[1].KeyID != "ed25519:older" || keys[1].ExpiredTS != 1780000000000 {
		t.Fatalf("parsed %+v", keys)
	}
	for _, entry := range []string{
		"ed25519:a_old " + pub,                        // no expired_ts
		"curve25519:x " + pub + " 1790000000000",      // not an ed25519 key ID
		"ed25519: " + pub + " 1790000000000",          // empty ID
		"ed25519:a_old notbase64! 1790000000000",      // bad key
		"ed25519:a_old AAAA 1790000000000",            // key too short
		"ed25519:a_old " + pub + " soon",              // bad expired_ts
		"ed25519:a_old " + pub + " -5",                // negative expired_ts
		"ed25519:a_old " + pub + " 1790000000000 and", // extra field
	} {
		f := Federation{OldVerifyKeys: []string{entry}}
		if err := f.Validate(); err == nil || !strings.Contains(err.Error(), "federation_api.old_verify_keys") {
			t.Errorf("%q: %v, want a federation_api.old_verify_keys error", entry, err)
		}
	}
	dup := Federation{OldVerifyKeys: []string{"ed25519:a " + pub + " 1", "ed25519:a " + pub + " 2"}}
	if err := dup.Validate(); err == nil {
		t.Errorf("a key ID listed twice was accepted")
	}
}
