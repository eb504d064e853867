package federationapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/mxerr"
)

// maxResponseBytes bounds what we read from another server (send_join
// responses of big rooms are the largest).
const maxResponseBytes = 64 << 20

// RemoteError is a non-2xx answer from another server.
type RemoteError struct {
	Server  string
	Status  int
	Code    string
	Message string
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("%s answered %d %s: %s", e.Server, e.Status, e.Code, e.Message)
}

// HTTPStatus is the status the server answered (the key server retries
// a failed resync unless it was refused with a 4xx).
func (e *RemoteError) HTTPStatus() int { return e.Status }

// ClientError turns a failed outbound request into the error a local
// client should see: the remote's 4xx code with a 4xx status, but never a
// 401 (the client's own token is fine: security case 32), and 502 for
// anything else.
func ClientError(err error) error {
	var re *RemoteError
	if errors.As(err, &re) && re.Status >= 400 && re.Status < 500 && re.Status != http.StatusUnauthorized {
		code := mxerr.Code(re.Code)
		if code == "" {
			code = mxerr.Unknown
		}
		return (&mxerr.Error{Code: code, Message: fmt.Sprintf("%s: %s", re.Server, re.Message), Err: err}).WithStatus(re.Status)
	}
	if _, ok := mxerr.As(err); ok {
		return err
	}
	return (&mxerr.Error{Code: mxerr.Unknown, Message: "the remote server could not be reached or failed", Err: err}).WithStatus(http.StatusBadGateway)
}

// client sends requests to other servers: it resolves the server name,
// signs with X-Matrix and reads bounded JSON answers.
type client struct {
	s        *Server
	resolver *resolver
	http     *http.Client
	// dialAddr maps the URL authority we use (certificate name and port)
	// to the address to connect to.
	dialAddr sync.Map
}

func newClient(s *Server, tlsConfig *tls.Config, dial func(ctx context.Context, network, addr string) (net.Conn, error)) *client {
	c := &client{s: s}
	if dial == nil {
		d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
		dial = d.DialContext
	}
	transport := &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if real, ok := c.dialAddr.Load(addr); ok {
				addr = real.(string)
			}
			return dial(ctx, network, addr)
		},
		TLSClientConfig:       tlsConfig.Clone(),
		ForceAttemptHTTP2:     true,
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 2 * time.Minute,
	}
	c.http = &http.Client{Transport: transport, Timeout: 0}
	wellKnownTransport := transport.Clone()
	wellKnownTransport.DialContext = dial
	c.resolver = &resolver{
		lookupSRV:       net.DefaultResolver.LookupSRV,
		wellKnownClient: &http.Client{Transport: wellKnownTransport, Timeout: wellKnownTimeout},
		now:             s.now,
		cache:           map[string]wellKnownEntry{},
	}
	return c
}

// signed sends a signed request to destination and decodes the JSON
// answer into out (if non-nil).
func (c *client) signed(ctx context.Context, destination, method, uri string, body, out any) error {
	return c.answered(ctx, destination, c.do(ctx, destination, method, uri, body, out, true, maxResponseBytes))
}

// signedLimited is signed with an answer of at most limit bytes.
func (c *client) signedLimited(ctx context.Context, destination, method, uri string, body, out any, limit int) error {
	return c.answered(ctx, destination, c.do(ctx, destination, method, uri, body, out, true, limit))
}

// unsigned sends a request without X-Matrix (key fetches).
func (c *client) unsigned(ctx context.Context, destination, method, uri string, body, out any) error {
	return c.answered(ctx, destination, c.do(ctx, destination, method, uri, body, out, false, maxResponseBytes))
}

// answered passes err through; when it is nil, destination has just
// answered a request of ours with a 2xx, so it is up, and the sender's
// backoff for it is reset and its queue sent now rather than at the
// retry time. Otherwise a server that failed while a transaction to it
// was in flight (restarted, or one that went away and another now
// answers at its name) would get no event of ours until the backoff ran
// out, however well it answers our other requests (make_join, send_join,
// state_ids): Complement's TestPartialStateJoin saw a leave queued for
// 40 s behind such a backoff, its servers reusing the ports of earlier
// ones. The sender's own transactions do not come here (sender.send):
// record resets the backoff for them. It costs nothing for a destination
// with no failures: the sender's backoffView says which may have some.
func (c *client) answered(ctx context.Context, destination string, err error) error {
	if err == nil && c.s.sender != nil {
		c.s.sender.destinationUp(ctx, destination)
	}
	return err
}

func (c *client) do(ctx context.Context, destination, method, uri string, body, out any, sign bool, limit int) error {
	if destination == c.s.serverName {
		return fmt.Errorf("refusing to send a federation request to ourselves")
	}
	targets, err := c.resolver.resolve(ctx, destination)
	if err != nil {
		return err
	}
	fr := fclient.NewFederationRequest(method, spec.ServerName(c.s.serverName), spec.ServerName(destination), uri)
	if body != nil {
		if err := fr.SetContent(body); err != nil {
			return err
		}
	}
	if sign {
		if err := fr.Sign(spec.ServerName(c.s.serverName), gomatrixserverlib.KeyID(c.s.key.ID), c.s.key.PrivateKey); err != nil {
			return err
		}
	}
	var lastErr error
	for _, t := range targets {
		lastErr = c.try(ctx, fr, t, destination, out, limit)
		var re *RemoteError
		if lastErr == nil || errors.As(lastErr, &re) || ctx.Err() != nil {
			return lastErr
		}
	}
	return lastErr
}

// try sends fr to one target. Only connection failures make the caller
// try the next target.
func (c *client) try(ctx context.Context, fr fclient.FederationRequest, t target, destination string, out any, limit int) error {
	req, err := fr.HTTPRequest()
	if err != nil {
		return err
	}
	_, port, err := net.SplitHostPort(t.Addr)
	if err != nil {
		return err
	}
	authority := net.JoinHostPort(t.TLSName, port)
	c.dialAddr.Store(authority, t.Addr)
	req.URL.Scheme = "https"
	req.URL.Host = authority
	req.Host = t.Host
	req = req.WithContext(ctx)
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s to %s: %w", fr.Method(), fr.RequestURI(), destination, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, int64(limit)+1))
	if err != nil {
		return fmt.Errorf("reading answer of %s: %w", destination, err)
	}
	if len(data) > limit {
		return fmt.Errorf("answer of %s is larger than %d bytes", destination, limit)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		re := &RemoteError{Server: destination, Status: resp.StatusCode}
		var body struct {
			Code    string `json:"errcode"`
			Message string `json:"error"`
		}
		if json.Unmarshal(data, &body) == nil {
			re.Code, re.Message = body.Code, body.Message
		}
		if re.Message == "" {
			re.Message = http.StatusText(resp.StatusCode)
		}
		return re
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("bad JSON from %s: %w", destination, err)
	}
	return nil
}

// itoa formats an int64.
func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// readAllLimited reads at most n bytes of r.
func readAllLimited(r io.Reader, n int64) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, n+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > n {
		return nil, mxerr.New(mxerr.TooLarge, "body larger than %d bytes", n)
	}
	return bytes.Clone(data), nil
}
