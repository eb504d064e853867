// Package tlscert makes the TLS certificates the federation listener
// serves: a self-signed one for development, or one issued by a CA the
// operator (or a test harness such as Complement) provides.
//
// Certificates name the server in a subjectAltName (DNS name, or IP
// address for IP-literal server names) as federation peers check it.
// Spec: server-server-api, "TLS". New leaf keys are ECDSA P-256; a CA key
// may be RSA, ECDSA or Ed25519, in PKCS#1, SEC 1 or PKCS#8 PEM.
//
// Every function is safe for concurrent use; none keeps state.
package tlscert

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// DefaultValidity is how long issued certificates last.
const DefaultValidity = 365 * 24 * time.Hour

// renewBefore: an existing certificate that expires sooner than this is
// replaced by Ensure.
const renewBefore = 24 * time.Hour

// Pair is a certificate and its private key, both PEM-encoded.
type Pair struct {
	CertPEM []byte
	KeyPEM  []byte
}

// CA is a certificate authority that can issue server certificates.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// Host returns the host part of a Matrix server name: the name without
// its port and, for IPv6 literals, without the brackets.
// Spec: appendices, "Server Name".
func Host(serverName string) string {
	if strings.HasPrefix(serverName, "[") {
		if end := strings.Index(serverName, "]"); end > 0 {
			return serverName[1:end]
		}
	}
	if host, _, err := net.SplitHostPort(serverName); err == nil {
		return host
	}
	return serverName
}

// SelfSigned returns a self-signed certificate for serverName, valid for
// validity from now. Peers will not trust it unless told to; it is for
// development and private test federations.
func SelfSigned(serverName string, validity time.Duration) (Pair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Pair{}, err
	}
	tmpl, err := leafTemplate(serverName, time.Now(), validity)
	if err != nil {
		return Pair{}, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return Pair{}, fmt.Errorf("creating certificate: %w", err)
	}
	return encodePair(der, key)
}

// NewCA returns a new CA certificate and key (ECDSA P-256) named
// commonName, for private test federations: several local servers that
// trust one CA, as the end-to-end federation tests run them.
func NewCA(commonName string, validity time.Duration) (Pair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Pair{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return Pair{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validity),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return Pair{}, fmt.Errorf("creating CA certificate: %w", err)
	}
	return encodePair(der, key)
}

// LoadCA parses a CA certificate and its private key from PEM.
func LoadCA(certPEM, keyPEM []byte) (*CA, error) {
	cert, err := parseCertificate(certPEM)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	if !cert.IsCA {
		return nil, errors.New("CA certificate: it is not a CA (basicConstraints CA:FALSE or missing)")
	}
	key, err := ParsePrivateKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	if !publicKeysEqual(cert.PublicKey, key.Public()) {
		return nil, errors.New("CA key does not match the CA certificate")
	}
	return &CA{Cert: cert, Key: key}, nil
}

// LoadCAFiles is LoadCA reading the two PEM files.
func LoadCAFiles(certPath, keyPath string) (*CA, error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, err
	}
	return LoadCA(certPEM, keyPEM)
}

// Issue returns a new key and a certificate for serverName signed by the
// CA, valid for validity from now (never past the CA's own expiry).
func (ca *CA) Issue(serverName string, validity time.Duration) (Pair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Pair{}, err
	}
	now := time.Now()
	tmpl, err := leafTemplate(serverName, now, validity)
	if err != nil {
		return Pair{}, err
	}
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	tmpl.AuthorityKeyId = ca.Cert.SubjectKeyId
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return Pair{}, fmt.Errorf("signing certificate: %w", err)
	}
	return encodePair(der, key)
}

// Ensure makes sure certPath and keyPath hold a key and a certificate for
// serverName that the CA signed and that is valid for at least another
// day; otherwise it issues a new pair and writes both files (the key with
// mode 0600). It reports whether it issued one.
//
// Checking rather than only testing for the files' existence matters when
// the files outlive the CA or the name: a container image committed with
// a certificate from a previous test run's CA, or a renamed server.
func (ca *CA) Ensure(certPath, keyPath, serverName string) (issued bool, err error) {
	if ca.valid(certPath, keyPath, serverName, time.Now()) {
		return false, nil
	}
	pair, err := ca.Issue(serverName, DefaultValidity)
	if err != nil {
		return false, err
	}
	if err := pair.Write(certPath, keyPath); err != nil {
		return false, err
	}
	return true, nil
}

// valid reports whether the files hold a usable certificate from ca.
func (ca *CA) valid(certPath, keyPath, serverName string, now time.Time) bool {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return false
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return false
	}
	cert, err := parseCertificate(certPEM)
	if err != nil {
		return false
	}
	key, err := ParsePrivateKey(keyPEM)
	if err != nil || !publicKeysEqual(cert.PublicKey, key.Public()) {
		return false
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	_, err = cert.Verify(x509.VerifyOptions{
		DNSName:     Host(serverName),
		Roots:       roots,
		CurrentTime: now.Add(renewBefore),
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	return err == nil
}

// Write stores the pair: the certificate with mode 0644, the key 0600,
// creating their directories. Each file is replaced atomically so a
// crash never leaves half a key.
func (p Pair) Write(certPath, keyPath string) error {
	if err := writeAtomic(keyPath, p.KeyPEM, 0o600); err != nil {
		return err
	}
	return writeAtomic(certPath, p.CertPEM, 0o644)
}

// ParsePrivateKey reads the first private key block in PEM data: PKCS#1
// ("RSA PRIVATE KEY"), SEC 1 ("EC PRIVATE KEY") or PKCS#8 ("PRIVATE KEY").
func ParsePrivateKey(data []byte) (crypto.Signer, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, errors.New("no PEM private key found")
		}
		var key any
		var err error
		switch block.Type {
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		default:
			continue // e.g. "EC PARAMETERS" before the key
		}
		if err != nil {
			return nil, fmt.Errorf("parsing %s: %w", block.Type, err)
		}
		switch k := key.(type) {
		case *rsa.PrivateKey, *ecdsa.PrivateKey, ed25519.PrivateKey:
			return k.(crypto.Signer), nil
		default:
			return nil, fmt.Errorf("unsupported private key type %T", key)
		}
	}
}

func parseCertificate(data []byte) (*x509.Certificate, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, errors.New("no PEM certificate found")
		}
		if block.Type == "CERTIFICATE" {
			return x509.ParseCertificate(block.Bytes)
		}
	}
}

func leafTemplate(serverName string, now time.Time, validity time.Duration) (*x509.Certificate, error) {
	host := Host(serverName)
	if host == "" {
		return nil, errors.New("empty server name")
	}
	if validity <= 0 {
		return nil, errors.New("validity must be positive")
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: host},
		// A little slack for clocks that run behind ours.
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		tmpl.IPAddresses = []net.IP{ip.AsSlice()}
	} else {
		tmpl.DNSNames = []string{host}
	}
	return tmpl, nil
}

func encodePair(der []byte, key *ecdsa.PrivateKey) (Pair, error) {
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return Pair{}, err
	}
	return Pair{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ak, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ak.Equal(b)
}

func writeAtomic(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
