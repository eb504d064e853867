package main

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/internal/tlscert"
)

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("%s holds no PEM", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func TestGenerateTLS(t *testing.T) {
	dir := t.TempDir()
	caCert, caKey := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	leafCert, leafKey := filepath.Join(dir, "leaf.crt"), filepath.Join(dir, "leaf.key")
	var out bytes.Buffer

	// A self-signed certificate can't act as a CA: generate-tls refuses it.
	if err := run([]string{"generate-tls", "-server-name", "ca.test", "-out-cert", caCert, "-out-key", caKey}, &out, &out); err != nil {
		t.Fatalf("self-signed: %v", err)
	}
	if cert := readCert(t, caCert); cert.Issuer.CommonName != "ca.test" || cert.DNSNames[0] != "ca.test" {
		t.Fatalf("self-signed cert: issuer %q names %v", cert.Issuer.CommonName, cert.DNSNames)
	}
	err := run([]string{"generate-tls", "-server-name", "hs1", "-ca-cert", caCert, "-ca-key", caKey, "-out-cert", leafCert, "-out-key", leafKey}, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "not a CA") {
		t.Fatalf("issuing from a non-CA certificate: err = %v", err)
	}

	ca, err := tlscert.NewCA("Test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.Write(caCert, caKey); err != nil {
		t.Fatal(err)
	}
	if err := run([]string{"generate-tls", "-server-name", "hs1", "-ca-cert", caCert, "-ca-key", caKey, "-out-cert", leafCert, "-out-key", leafKey}, &out, &out); err != nil {
		t.Fatalf("issuing from a CA: %v", err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.CertPEM)
	if _, err := readCert(t, leafCert).Verify(x509.VerifyOptions{DNSName: "hs1", Roots: roots}); err != nil {
		t.Fatalf("issued certificate does not verify against the CA: %v", err)
	}

	for _, args := range [][]string{
		{"generate-tls"}, // no server name
		{"generate-tls", "-server-name", "hs1", "-ca-cert", caCert}, // CA cert without key
	} {
		if err := run(args, &out, &out); err == nil {
			t.Errorf("%v: accepted", args)
		}
	}
}

func TestServeServerNameEnv(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "myelin.yaml")
	t.Setenv("MYELIN_GLOBAL_SERVER_NAME", "from-myelin-env.test")
	t.Setenv("SERVER_NAME", "hs1")
	var out bytes.Buffer
	cfg, _, err := serveConfig([]string{"-config", path, "-server-name-env", "SERVER_NAME"}, &out)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Global.ServerName != "hs1" {
		t.Fatalf("server_name = %q, want hs1 from SERVER_NAME", cfg.Global.ServerName)
	}

	t.Setenv("SERVER_NAME", "")
	if _, _, err := serveConfig([]string{"-config", path, "-server-name-env", "SERVER_NAME"}, &out); err == nil || !strings.Contains(err.Error(), "SERVER_NAME") {
		t.Fatalf("empty SERVER_NAME: err = %v, want one naming the variable", err)
	}
	t.Setenv("SERVER_NAME", "not a valid name!")
	if _, _, err := serveConfig([]string{"-config", path, "-server-name-env", "SERVER_NAME"}, &out); err == nil || !strings.Contains(err.Error(), "global.server_name") {
		t.Fatalf("invalid SERVER_NAME: err = %v, want the server_name validation error", err)
	}
}
