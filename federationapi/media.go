package federationapi

import (
	"context"
	"fmt"
	"net"
	"net/http"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// What the media repository needs to serve and fetch media over
// federation: the same X-Matrix checks as every federation request, the
// same signing, and the same server discovery.
// Spec: server-server-api, "Content Repository".

// AuthenticateOrigin checks a request's X-Matrix authorization and
// returns the origin server (mediaapi.OriginAuthenticator). Failures are
// 401 M_UNAUTHORIZED.
func (s *Server) AuthenticateOrigin(r *http.Request) (string, error) {
	origin, err := s.verifyRequest(r)
	if err != nil {
		return "", err
	}
	s.sender.destinationUp(r.Context(), origin)
	return origin, nil
}

// SignRequest adds this server's X-Matrix Authorization header to a
// body-less request for destination's federation API.
func (s *Server) SignRequest(r *http.Request, destination string) error {
	if r.ContentLength > 0 {
		return fmt.Errorf("federationapi: SignRequest signs body-less requests only")
	}
	fr := fclient.NewFederationRequest(r.Method, spec.ServerName(s.serverName), spec.ServerName(destination), r.URL.RequestURI())
	if err := fr.Sign(spec.ServerName(s.serverName), gomatrixserverlib.KeyID(s.key.ID), s.key.PrivateKey); err != nil {
		return err
	}
	signed, err := fr.HTTPRequest()
	if err != nil {
		return err
	}
	r.Header.Del("Authorization")
	for _, v := range signed.Header.Values("Authorization") {
		r.Header.Add("Authorization", v)
	}
	return nil
}

// ResolveBaseURL returns https://host:port for serverName's federation
// API after server discovery (mediaapi.Resolver). A base URL carries one
// name for both the certificate and the connection, so a discovered
// target whose address differs from its certificate name (an SRV target)
// is used by address only when no target has them equal.
func (s *Server) ResolveBaseURL(ctx context.Context, serverName string) (string, error) {
	targets, err := s.client.resolver.resolve(ctx, serverName)
	if err != nil {
		return "", err
	}
	if len(targets) == 0 {
		return "", fmt.Errorf("no address for %s", serverName)
	}
	for _, t := range targets {
		if host, port, err := net.SplitHostPort(t.Addr); err == nil && host == t.TLSName {
			return "https://" + net.JoinHostPort(t.TLSName, port), nil
		}
	}
	return "https://" + targets[0].Addr, nil
}
