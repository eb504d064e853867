package federationapi

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"mime"
	"net"
	"net/http"
	"path"
	"strings"
	"unicode/utf8"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
)

type originKey struct{}

// originOf returns the authenticated origin server of a request.
func originOf(ctx context.Context) string {
	o, _ := ctx.Value(originKey{}).(string)
	return o
}

// maxFederationBody bounds request bodies (a /send of 50 PDUs of 64 KiB
// and 100 EDUs fits).
const maxFederationBody = 8 << 20

// authenticate checks the X-Matrix Authorization header of every
// /_matrix/federation request: origin, destination (must be us), key and
// signature over {method, uri, origin, destination, content}. Anything
// missing or wrong is 401 M_UNAUTHORIZED.
// Spec: server-server-api, "Request Authentication".
func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin, err := s.verifyRequest(r)
		if err != nil {
			httpx.WriteError(w, r, err)
			return
		}
		s.sender.destinationUp(r.Context(), origin)
		ctx := context.WithValue(r.Context(), originKey{}, origin)
		ctx = httpx.WithLoggerAttrs(ctx, "origin", origin)
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

func unauthorized(format string, args ...any) error {
	return mxerr.New(mxerr.Unauthorized, format, args...).WithStatus(http.StatusUnauthorized)
}

func (s *Server) verifyRequest(r *http.Request) (string, error) {
	var origin, destination, keyID, sig string
	for _, h := range r.Header.Values("Authorization") {
		scheme, o, d, k, sg := fclient.ParseAuthorization(h)
		if scheme != "X-Matrix" {
			continue
		}
		origin, destination, keyID, sig = string(o), string(d), string(k), sg
		break
	}
	if origin == "" || keyID == "" || sig == "" {
		return "", unauthorized("missing or incomplete X-Matrix authorization")
	}
	if _, _, ok := spec.ParseAndValidateServerName(spec.ServerName(origin)); !ok {
		return "", unauthorized("invalid origin %q", origin)
	}
	if destination != "" && destination != s.serverName {
		return "", unauthorized("this server is %s, not %s", s.serverName, destination)
	}
	if destination == "" {
		destination = s.serverName
	}
	body, err := readAllLimited(http.MaxBytesReader(nil, r.Body, maxFederationBody), maxFederationBody)
	if err != nil {
		if _, ok := mxerr.As(err); ok {
			return "", err
		}
		return "", mxerr.Wrap(err, mxerr.TooLarge, "request body too large")
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	signed := map[string]any{
		"method":      r.Method,
		"uri":         r.URL.RequestURI(),
		"origin":      origin,
		"destination": destination,
		"signatures":  map[string]map[string]string{origin: {keyID: sig}},
	}
	if len(body) > 0 {
		if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
			return "", mxerr.New(mxerr.NotJSON, "content must be application/json")
		}
		if !utf8.Valid(body) || !json.Valid(body) {
			return "", mxerr.New(mxerr.NotJSON, "request body is not valid JSON")
		}
		signed["content"] = json.RawMessage(body)
	}
	message, err := json.Marshal(signed)
	if err != nil {
		return "", mxerr.Wrap(err, mxerr.BadJSON, "bad request")
	}
	err = s.keys.verify(r.Context(), origin, message, spec.AsTimestamp(s.now()), gomatrixserverlib.StrictValiditySignatureCheck, forRequests)
	if err != nil {
		return "", unauthorized("invalid signature: %v", err)
	}
	return origin, nil
}

// aclAllows applies a room's m.room.server_acl to server.
// Spec: client-server-api, "Server Access Control Lists (ACLs) for rooms".
func aclAllows(content json.RawMessage, server string) bool {
	var acl struct {
		Allow           []string `json:"allow"`
		Deny            []string `json:"deny"`
		AllowIPLiterals *bool    `json:"allow_ip_literals"`
	}
	if json.Unmarshal(content, &acl) != nil {
		return true // an unreadable ACL is ignored, as if absent
	}
	host := server
	if h, _, err := net.SplitHostPort(server); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if (acl.AllowIPLiterals != nil && !*acl.AllowIPLiterals) && net.ParseIP(host) != nil {
		return false
	}
	for _, pattern := range acl.Deny {
		if globMatch(pattern, host) {
			return false
		}
	}
	for _, pattern := range acl.Allow {
		if globMatch(pattern, host) {
			return true
		}
	}
	return false
}

// globMatch matches * and ? (no other metacharacters), case-insensitively.
func globMatch(pattern, s string) bool {
	// path.Match treats [ and \ specially; escape them.
	esc := strings.NewReplacer(`\`, `\\`, `[`, `\[`, `]`, `\]`).Replace(strings.ToLower(pattern))
	ok, err := path.Match(esc, strings.ToLower(s))
	return err == nil && ok
}

// checkACL returns M_FORBIDDEN when roomID's server ACL denies server.
func (s *Server) checkACL(ctx context.Context, roomID, server string) error {
	ev, err := s.rooms.RoomStateEvent(ctx, roomID, "m.room.server_acl", "")
	if mxerr.Is(err, mxerr.NotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if !aclAllows(ev.Content, server) {
		return mxerr.New(mxerr.Forbidden, "server %s is denied by the room's server ACL", server)
	}
	return nil
}

// roomACL is middleware for room-scoped endpoints ({roomID} in the
// path): the room's server ACL must allow the origin.
func (s *Server) roomACL(next http.Handler) http.Handler {
	return httpx.H(func(w http.ResponseWriter, r *http.Request) error {
		roomID := roomParam(r)
		if roomID != "" {
			if err := s.checkACL(r.Context(), roomID, originOf(r.Context())); err != nil {
				return err
			}
		}
		next.ServeHTTP(w, r)
		return nil
	})
}
