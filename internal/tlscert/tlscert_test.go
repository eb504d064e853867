package tlscert

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// newCA makes a CA the way a test harness would, encoding its key in the
// given PEM form.
func newCA(t *testing.T, key crypto.Signer, pemType string) (certPEM, keyPEM []byte) {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "Test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(10 * 365 * 24 * time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	var keyDER []byte
	switch pemType {
	case "RSA PRIVATE KEY":
		keyDER = x509.MarshalPKCS1PrivateKey(key.(*rsa.PrivateKey))
	case "EC PRIVATE KEY":
		keyDER, err = x509.MarshalECPrivateKey(key.(*ecdsa.PrivateKey))
	case "PRIVATE KEY":
		keyDER, err = x509.MarshalPKCS8PrivateKey(key)
	}
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: pemType, Bytes: keyDER})
}

func rsaKey(t *testing.T) crypto.Signer {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func ecKey(t *testing.T) crypto.Signer {
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func edKey(t *testing.T) crypto.Signer {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// verify checks the issued certificate chains to caPEM for serverName,
// as a federation peer would.
func verify(t *testing.T, pair Pair, caPEM []byte, serverName string) error {
	t.Helper()
	cert, err := parseCertificate(pair.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		t.Fatal("bad CA PEM")
	}
	_, err = cert.Verify(x509.VerifyOptions{DNSName: Host(serverName), Roots: roots})
	return err
}

func TestIssueFromCAKeyTypes(t *testing.T) {
	cases := []struct {
		name    string
		key     crypto.Signer
		pemType string
	}{
		// Complement's CA: RSA in PKCS#1.
		{"rsa-pkcs1", rsaKey(t), "RSA PRIVATE KEY"},
		{"rsa-pkcs8", rsaKey(t), "PRIVATE KEY"},
		{"ecdsa-sec1", ecKey(t), "EC PRIVATE KEY"},
		{"ecdsa-pkcs8", ecKey(t), "PRIVATE KEY"},
		{"ed25519-pkcs8", edKey(t), "PRIVATE KEY"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			caCert, caKey := newCA(t, tc.key, tc.pemType)
			ca, err := LoadCA(caCert, caKey)
			if err != nil {
				t.Fatalf("LoadCA: %v", err)
			}
			pair, err := ca.Issue("hs1", DefaultValidity)
			if err != nil {
				t.Fatalf("Issue: %v", err)
			}
			if err := verify(t, pair, caCert, "hs1"); err != nil {
				t.Fatalf("issued cert does not verify: %v", err)
			}
			if err := verify(t, pair, caCert, "hs2"); err == nil {
				t.Fatal("cert for hs1 verified for hs2")
			}
			if _, err := ParsePrivateKey(pair.KeyPEM); err != nil {
				t.Fatalf("issued key: %v", err)
			}
		})
	}
}

func TestIssueServerNames(t *testing.T) {
	caCert, caKey := newCA(t, ecKey(t), "EC PRIVATE KEY")
	ca, err := LoadCA(caCert, caKey)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"example.org", "matrix.example.org:8448", "127.0.0.1", "127.0.0.1:8448", "[::1]", "[::1]:8448"} {
		pair, err := ca.Issue(name, time.Hour)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := verify(t, pair, caCert, name); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestIssueNeverOutlivesCA(t *testing.T) {
	caCert, caKey := newCA(t, ecKey(t), "EC PRIVATE KEY")
	ca, err := LoadCA(caCert, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := ca.Issue("hs1", 100*365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := parseCertificate(pair.CertPEM)
	if cert.NotAfter.After(ca.Cert.NotAfter) {
		t.Fatalf("leaf expires %v, after its CA %v", cert.NotAfter, ca.Cert.NotAfter)
	}
}

func TestSelfSigned(t *testing.T) {
	pair, err := SelfSigned("localhost:8448", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := verify(t, pair, pair.CertPEM, "localhost"); err != nil {
		t.Fatalf("self-signed cert does not verify against itself: %v", err)
	}
	if _, err := SelfSigned("", time.Hour); err == nil {
		t.Fatal("empty server name accepted")
	}
}

func TestNewCA(t *testing.T) {
	caPair, err := NewCA("Private Federation CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := LoadCA(caPair.CertPEM, caPair.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue("localhost:8448", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := verify(t, leaf, caPair.CertPEM, "localhost"); err != nil {
		t.Fatal(err)
	}
}

func TestLoadCARejects(t *testing.T) {
	caCert, caKey := newCA(t, ecKey(t), "EC PRIVATE KEY")
	_, otherKey := newCA(t, ecKey(t), "EC PRIVATE KEY")
	leaf, err := SelfSigned("hs1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string][2][]byte{
		"mismatched key": {caCert, otherKey},
		"not a CA":       {leaf.CertPEM, leaf.KeyPEM},
		"no cert":        {[]byte("junk"), caKey},
		"no key":         {caCert, []byte("junk")},
	}
	for name, c := range cases {
		if _, err := LoadCA(c[0], c[1]); err == nil {
			t.Errorf("%s: LoadCA accepted it", name)
		}
	}
}

func TestEnsure(t *testing.T) {
	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "tls", "fed.crt"), filepath.Join(dir, "tls", "fed.key")
	caCert, caKey := newCA(t, rsaKey(t), "RSA PRIVATE KEY")
	ca, err := LoadCA(caCert, caKey)
	if err != nil {
		t.Fatal(err)
	}

	issued, err := ca.Ensure(certPath, keyPath, "hs1")
	if err != nil || !issued {
		t.Fatalf("first Ensure: issued=%v err=%v; want a new pair", issued, err)
	}
	first, _ := os.ReadFile(certPath)
	if err := verify(t, Pair{CertPEM: first}, caCert, "hs1"); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(keyPath); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode: %v %v; want 0600", st.Mode(), err)
	}

	// A valid pair is kept (CMD runs again on every container start).
	issued, err = ca.Ensure(certPath, keyPath, "hs1")
	if err != nil || issued {
		t.Fatalf("second Ensure: issued=%v err=%v; want the existing pair kept", issued, err)
	}
	if again, _ := os.ReadFile(certPath); !bytes.Equal(again, first) {
		t.Fatal("certificate was rewritten")
	}

	// A new server name, or a new CA, replaces it.
	if issued, err = ca.Ensure(certPath, keyPath, "hs2"); err != nil || !issued {
		t.Fatalf("Ensure for a new name: issued=%v err=%v", issued, err)
	}
	caCert2, caKey2 := newCA(t, ecKey(t), "EC PRIVATE KEY")
	ca2, err := LoadCA(caCert2, caKey2)
	if err != nil {
		t.Fatal(err)
	}
	if issued, err = ca2.Ensure(certPath, keyPath, "hs2"); err != nil || !issued {
		t.Fatalf("Ensure with a new CA: issued=%v err=%v", issued, err)
	}
	now, _ := os.ReadFile(certPath)
	if err := verify(t, Pair{CertPEM: now}, caCert2, "hs2"); err != nil {
		t.Fatal(err)
	}

	// One that expires within a day is renewed.
	soon, _ := ca2.Issue("hs2", time.Hour)
	if err := soon.Write(certPath, keyPath); err != nil {
		t.Fatal(err)
	}
	if issued, err = ca2.Ensure(certPath, keyPath, "hs2"); err != nil || !issued {
		t.Fatalf("Ensure with an expiring cert: issued=%v err=%v", issued, err)
	}

	// A key that does not match the certificate replaces both.
	other, _ := ca2.Issue("hs2", time.Hour)
	if err := os.WriteFile(keyPath, other.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if issued, err = ca2.Ensure(certPath, keyPath, "hs2"); err != nil || !issued {
		t.Fatalf("Ensure with a mismatched key: issued=%v err=%v", issued, err)
	}
}

func TestHost(t *testing.T) {
	for in, want := range map[string]string{
		"example.org":      "example.org",
		"example.org:8448": "example.org",
		"1.2.3.4:8448":     "1.2.3.4",
		"[::1]:8448":       "::1",
		"[::1]":            "::1",
		"hs1":              "hs1",
	} {
		if got := Host(in); got != want {
			t.Errorf("Host(%q) = %q, want %q", in, got, want)
		}
	}
}
