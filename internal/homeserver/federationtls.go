package homeserver

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/http"
	"os"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/tlscert"
)

// federationServerTLS prepares the federation listener's TLS config: it
// first issues the certificate from federation_api.tls_ca_cert when that
// is set (see tlscert.CA.Ensure), then loads tls_cert and tls_key. It
// returns nil when no federation listener is configured.
func federationServerTLS(cfg *config.Config, logger *slog.Logger) (*tls.Config, error) {
	f := cfg.Federation
	if f.Listen == "" {
		return nil, nil
	}
	if f.TLSCACert != "" {
		ca, err := tlscert.LoadCAFiles(f.TLSCACert, f.TLSCAKey)
		if err != nil {
			return nil, fmt.Errorf("federation_api.tls_ca_cert/tls_ca_key: %w", err)
		}
		issued, err := ca.Ensure(f.TLSCert, f.TLSKey, cfg.Global.ServerName)
		if err != nil {
			return nil, fmt.Errorf("issuing the federation certificate from federation_api.tls_ca_cert: %w", err)
		}
		if issued {
			logger.Info("issued a federation TLS certificate", "server_name", cfg.Global.ServerName,
				"ca", ca.Cert.Subject.CommonName, "cert", f.TLSCert)
		}
	}
	cert, err := tls.LoadX509KeyPair(f.TLSCert, f.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("federation_api.tls_cert/tls_key: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// federationClient is the HTTP client for requests to other homeservers:
// it trusts the system roots (which honour SSL_CERT_FILE) plus
// federation_api.trusted_ca_file. Callers bound each request with its
// context; long federation calls such as send_join make a global timeout
// the wrong tool. Without trusted_ca_file, RootCAs stays nil: crypto/tls
// then verifies against the same system roots, loaded at the first
// handshake instead of at start (parsing them holds ~250 kB of heap, which
// a server that never federates does not need).
func federationClient(f config.Federation) (*http.Client, error) {
	var roots *x509.CertPool
	if f.TrustedCAFile != "" {
		var err error
		roots, err = x509.SystemCertPool()
		if err != nil || roots == nil {
			roots = x509.NewCertPool()
		}
		pemData, err := os.ReadFile(f.TrustedCAFile)
		if err != nil {
			return nil, fmt.Errorf("federation_api.trusted_ca_file: %w", err)
		}
		if !roots.AppendCertsFromPEM(pemData) {
			return nil, fmt.Errorf("federation_api.trusted_ca_file: %s holds no PEM certificate", f.TrustedCAFile)
		}
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	return &http.Client{Transport: transport}, nil
}
