package homeserver_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/homeserver"
	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/storage"
)

// writeCA writes an RSA CA in PKCS#1, the form Complement mounts at
// /complement/ca, and returns the paths.
func writeCA(t *testing.T, dir string) (certPath, keyPath string) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(7),
		Subject:               pkix.Name{CommonName: "Federation Test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour * 30),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath = filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}

// TestFederationListenerWithCAIssuedCert starts a server that issues its
// federation certificate from a CA at start, and fetches its signing key
// over TLS as another homeserver would: trusting that CA only.
func TestFederationListenerWithCAIssuedCert(t *testing.T) {
	caDir := t.TempDir()
	caCert, caKey := writeCA(t, caDir)
	tlsDir := t.TempDir()
	srv := testserver.Start(t, storage.SQLite, func(cfg *config.Config) {
		cfg.Federation.Enabled = true
		cfg.Federation.Listen = "127.0.0.1:0"
		cfg.Federation.TLSCert = filepath.Join(tlsDir, "federation.crt")
		cfg.Federation.TLSKey = filepath.Join(tlsDir, "federation.key")
		cfg.Federation.TLSCACert = caCert
		cfg.Federation.TLSCAKey = caKey
		cfg.Federation.TrustedCAFile = caCert
	})
	if _, err := os.Stat(srv.Config.Federation.TLSCert); err != nil {
		t.Fatalf("no certificate issued at start: %v", err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.HS.ServeFederation(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeFederation: %v", err)
		}
	})
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	url := "https://localhost:" + port + "/_matrix/key/v2/server"

	// The server's own outbound client trusts the CA through
	// federation_api.trusted_ca_file.
	resp, err := srv.HS.FederationClient.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if resp.TLS == nil || len(resp.TLS.PeerCertificates) == 0 {
		t.Fatal("response did not come over TLS")
	}
	if got := resp.TLS.PeerCertificates[0].Issuer.CommonName; got != "Federation Test CA" {
		t.Errorf("certificate issued by %q, want the test CA", got)
	}
	var keys struct {
		ServerName string                     `json:"server_name"`
		VerifyKeys map[string]json.RawMessage `json:"verify_keys"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&keys); err != nil {
		t.Fatal(err)
	}
	if keys.ServerName != "localhost" {
		t.Errorf("server_name %q, want localhost", keys.ServerName)
	}
	if _, ok := keys.VerifyKeys[srv.HS.Key.ID]; !ok {
		t.Errorf("verify_keys %v lack the server's key %s", keys.VerifyKeys, srv.HS.Key.ID)
	}

	// A peer that does not trust the CA refuses the certificate.
	untrusting := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: x509.NewCertPool()}}}
	_, err = untrusting.Get(url)
	var unknownAuthority x509.UnknownAuthorityError
	if !errors.As(err, &unknownAuthority) {
		t.Errorf("GET without trusting the CA: err = %v, want x509.UnknownAuthorityError", err)
	}
}

func TestServeFederationWithoutListener(t *testing.T) {
	srv := testserver.Start(t, storage.SQLite, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := srv.HS.ServeFederation(context.Background(), ln); err == nil {
		t.Fatal("ServeFederation served without a configured federation listener")
	}
}

func TestBadCAFailsStart(t *testing.T) {
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.pem")
	if err := os.WriteFile(junk, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := config.Defaults()
	cfg.Global.SigningKeyPath = filepath.Join(dir, "signing.key")
	cfg.Database.SQLitePath = filepath.Join(dir, "myelin.db")
	cfg.Federation = config.Federation{Listen: ":0", TLSCert: filepath.Join(dir, "f.crt"), TLSKey: filepath.Join(dir, "f.key"), TLSCACert: junk, TLSCAKey: junk}
	if _, err := homeserverNew(t, &cfg); err == nil {
		t.Fatal("started with an unreadable CA")
	}
	cfg.Federation = config.Federation{TrustedCAFile: junk}
	if _, err := homeserverNew(t, &cfg); err == nil {
		t.Fatal("started with a trusted_ca_file holding no certificate")
	}
}

func homeserverNew(t *testing.T, cfg *config.Config) (*homeserver.Homeserver, error) {
	hs, err := homeserver.New(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err == nil {
		t.Cleanup(func() { hs.Close() })
	}
	return hs, err
}
