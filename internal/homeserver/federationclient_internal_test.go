package homeserver

import (
	"crypto/x509"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/tlscert"
)

// TestFederationClientRootsLoadedLazily: without trusted_ca_file the
// federation client leaves RootCAs nil, so crypto/tls loads the system
// roots at the first handshake instead of the server parsing them at start;
// with trusted_ca_file it carries a pool that holds that CA.
func TestFederationClientRootsLoadedLazily(t *testing.T) {
	c, err := federationClient(config.Federation{})
	if err != nil {
		t.Fatal(err)
	}
	if roots := c.Transport.(*http.Transport).TLSClientConfig.RootCAs; roots != nil {
		t.Errorf("RootCAs = %p without trusted_ca_file: the system roots were parsed at start", roots)
	}

	dir := t.TempDir()
	pair, err := tlscert.NewCA("Lazy Roots Test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := tlscert.LoadCA(pair.CertPEM, pair.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, pair.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	c, err = federationClient(config.Federation{TrustedCAFile: caFile})
	if err != nil {
		t.Fatal(err)
	}
	roots := c.Transport.(*http.Transport).TLSClientConfig.RootCAs
	if roots == nil {
		t.Fatal("RootCAs is nil with trusted_ca_file")
	}
	if _, err := ca.Cert.Verify(x509.VerifyOptions{Roots: roots}); err != nil {
		t.Errorf("the pool does not trust trusted_ca_file's CA: %v", err)
	}
}
