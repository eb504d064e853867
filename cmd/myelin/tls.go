package main

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/myelin-chat/myelin/internal/tlscert"
)

// runGenerateTLS writes a certificate and key for the federation listener:
// self-signed by default (development, private test federations), or
// issued by a CA given with -ca-cert and -ca-key. Servers that should
// issue their own at every start use federation_api.tls_ca_cert instead.
func runGenerateTLS(args []string, stdout, _ io.Writer) error {
	fs := flag.NewFlagSet("generate-tls", flag.ContinueOnError)
	serverName := fs.String("server-name", "", "the server name the certificate is for (required), e.g. example.org")
	outCert := fs.String("out-cert", "federation.crt", "where to write the PEM certificate")
	outKey := fs.String("out-key", "federation.key", "where to write the PEM private key (mode 0600)")
	caCert := fs.String("ca-cert", "", "PEM certificate of the CA that signs it (empty: self-signed)")
	caKey := fs.String("ca-key", "", "PEM private key of that CA (RSA, ECDSA or Ed25519)")
	validity := fs.Duration("validity", tlscert.DefaultValidity, "how long the certificate is valid")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *serverName == "" {
		return errors.New("generate-tls: -server-name is required")
	}
	if (*caCert == "") != (*caKey == "") {
		return errors.New("generate-tls: give -ca-cert and -ca-key together, or neither for a self-signed certificate")
	}
	var pair tlscert.Pair
	var err error
	how := "self-signed"
	if *caCert != "" {
		ca, lerr := tlscert.LoadCAFiles(*caCert, *caKey)
		if lerr != nil {
			return fmt.Errorf("generate-tls: %w", lerr)
		}
		pair, err = ca.Issue(*serverName, *validity)
		how = "issued by " + ca.Cert.Subject.CommonName
	} else {
		pair, err = tlscert.SelfSigned(*serverName, *validity)
	}
	if err != nil {
		return fmt.Errorf("generate-tls: %w", err)
	}
	if err := pair.Write(*outCert, *outKey); err != nil {
		return fmt.Errorf("generate-tls: %w", err)
	}
	fmt.Fprintf(stdout, "Wrote a %s certificate for %s to %s (key: %s), valid for %s.\n", how, *serverName, *outCert, *outKey, *validity)
	return nil
}
