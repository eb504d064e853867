package clientapi

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
)

// Profile error codes. Spec: client-server-api, "PUT
// /_matrix/client/v3/profile/{userId}/{keyName}" (both answer 400).
const (
	errProfileTooLarge mxerr.Code = "M_PROFILE_TOO_LARGE"
	errKeyTooLarge     mxerr.Code = "M_KEY_TOO_LARGE"
)

// Profile limits.
const (
	// maxProfileSize bounds the JSON encoding of a whole profile: "the
	// total profile MUST be under 64 KiB".
	maxProfileSize = 64 * 1024
	// maxProfileKeyLength is the longest key name, in bytes.
	maxProfileKeyLength = 255
	// maxDisplayNameLength and maxAvatarURLLength bound the two fields
	// copied into every m.room.member event (servers MAY limit fields), so
	// a profile cannot push member events towards the 64 KiB event limit.
	maxDisplayNameLength = 256  // code points
	maxAvatarURLLength   = 1000 // bytes
)

// Well-known profile fields.
const (
	fieldDisplayName = "displayname"
	fieldAvatarURL   = "avatar_url"
	fieldTimeZone    = "m.tz"
)

// profileKeyPattern is keyName's grammar.
// Spec: client-server-api, "PUT /_matrix/client/v3/profile/{userId}/{keyName}".
var profileKeyPattern = regexp.MustCompile(`^(avatar_url|displayname|m\.tz|[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+)$`)

// userDataRoutes registers profiles, account data, room tags and filters.
func (s *Server) userDataRoutes(r chi.Router) {
	// Spec: client-server-api, "Profiles": looking a profile up needs no
	// access token; a token, if sent, must be valid.
	optional := r.With(authn.Optional(s))
	optional.Method(http.MethodGet, "/_matrix/client/v3/profile/{userId}", httpx.H(s.getProfile))
	optional.Method(http.MethodGet, "/_matrix/client/v3/profile/{userId}/{keyName}", httpx.H(s.getProfileField))

	r.Group(func(r chi.Router) {
		r.Use(authn.Middleware(s, &guestEndpoints)) // guest_gate.go
		// The legacy /displayname and /avatar_url routes are this one with
		// keyName set (spec v1.16 merged them).
		handle(r, http.MethodPut, "/_matrix/client/v3/profile/{userId}/{keyName}", s.putProfileField)
		handle(r, http.MethodDelete, "/_matrix/client/v3/profile/{userId}/{keyName}", s.deleteProfileField)
		s.accountDataRoutes(r)
		s.tagRoutes(r)
		s.filterRoutes(r)
	})
}

// unescapedParam returns a path parameter with percent-escapes decoded:
// chi matches on the raw path when the client escaped characters such as
// '@', ':' or '!', and then the parameter keeps its escapes.
func unescapedParam(r *http.Request, name string) (string, error) {
	v, err := url.PathUnescape(chi.URLParam(r, name))
	if err != nil {
		return "", mxerr.New(mxerr.InvalidParam, "path parameter %s is not correctly escaped", name)
	}
	return v, nil
}

// pathUserID reads the {userId} parameter and checks its shape.
func pathUserID(r *http.Request) (string, error) {
	userID, err := unescapedParam(r, "userId")
	if err != nil {
		return "", err
	}
	if !strings.HasPrefix(userID, "@") || !strings.Contains(userID, ":") {
		return "", mxerr.New(mxerr.InvalidParam, "%q is not a user ID", userID)
	}
	return userID, nil
}

// ownLocalpart checks that the authenticated caller is the user named in
// the path and returns their localpart; anyone else gets 403 M_FORBIDDEN.
func (s *Server) ownLocalpart(r *http.Request, what string) (string, error) {
	userID, err := unescapedParam(r, "userId")
	if err != nil {
		return "", err
	}
	caller := authn.FromContext(r.Context())
	if caller == nil || caller.UserID != userID {
		return "", mxerr.New(mxerr.Forbidden, "cannot %s for other users", what)
	}
	local := s.localpart(userID)
	if local == "" {
		return "", mxerr.New(mxerr.Forbidden, "cannot %s for other users", what)
	}
	return local, nil
}

// getProfile answers with every field of a user's profile.
// Spec: client-server-api, "GET /_matrix/client/v3/profile/{userId}".
func (s *Server) getProfile(w http.ResponseWriter, r *http.Request) error {
	userID, err := pathUserID(r)
	if err != nil {
		return err
	}
	if s.localpart(userID) == "" && s.federation != nil {
		fields, err := s.federation.QueryProfile(r.Context(), userID, "")
		if err != nil {
			return err
		}
		return httpx.OK(w, fields)
	}
	fields, err := s.Profile(r.Context(), userID)
	if mxerr.Is(err, mxerr.NotFound) && s.asQueries != nil && s.asQueries.QueryUser(r.Context(), userID) {
		// Spec: application-service-api, "GET /_matrix/app/v1/users/{userId}":
		// the service has registered the user before answering 200.
		fields, err = s.Profile(r.Context(), userID)
	}
	if err != nil {
		return err
	}
	return httpx.OK(w, fields)
}

// getProfileField answers with one field of a user's profile.
// Spec: client-server-api, "GET /_matrix/client/v3/profile/{userId}/{keyName}".
func (s *Server) getProfileField(w http.ResponseWriter, r *http.Request) error {
	userID, err := pathUserID(r)
	if err != nil {
		return err
	}
	key, err := unescapedParam(r, "keyName")
	if err != nil {
		return err
	}
	if s.localpart(userID) == "" && s.federation != nil {
		// Spec: client-server-api, "Profiles": ask the user's server.
		fields, err := s.federation.QueryProfile(r.Context(), userID, key)
		if err != nil {
			return err
		}
		value, ok := fields[key]
		if !ok {
			return mxerr.New(mxerr.NotFound, "the user has no profile field %q", key)
		}
		return httpx.OK(w, map[string]json.RawMessage{key: value})
	}
	local, err := s.localProfileOwner(userID)
	if err != nil {
		return err
	}
	value, found, err := s.loadProfileField(r.Context(), local, key)
	if err != nil {
		return err
	}
	if !found {
		return mxerr.New(mxerr.NotFound, "the user has no profile field %q", key)
	}
	return httpx.OK(w, map[string]json.RawMessage{key: value})
}

// putProfileField sets one field of the caller's own profile.
// Spec: client-server-api, "PUT /_matrix/client/v3/profile/{userId}/{keyName}".
func (s *Server) putProfileField(w http.ResponseWriter, r *http.Request) error {
	local, key, err := s.writableProfileField(r)
	if err != nil {
		return err
	}
	body, err := httpx.ReadBody(r)
	if err != nil {
		return err
	}
	var request map[string]json.RawMessage
	if err := httpx.Unmarshal(body, &request); err != nil {
		return err
	}
	// The body "contains exactly one property" named keyName; other
	// properties are ignored rather than refused, as older clients send them.
	raw, ok := request[key]
	if !ok {
		return mxerr.New(mxerr.MissingParam, "the request body has no %q property", key)
	}
	value, remove, err := profileValue(key, raw)
	if err != nil {
		return err
	}
	var changed bool
	if remove {
		changed, err = s.deleteProfileFieldRow(r.Context(), local, key)
	} else {
		changed, err = s.storeProfileField(r.Context(), local, key, value)
	}
	if err != nil {
		return err
	}
	s.profileChanged(r, key, changed)
	return httpx.OK(w, httpx.EmptyObject)
}

// deleteProfileField removes one field of the caller's own profile; a
// field that does not exist is not an error.
// Spec: client-server-api, "DELETE /_matrix/client/v3/profile/{userId}/{keyName}".
func (s *Server) deleteProfileField(w http.ResponseWriter, r *http.Request) error {
	local, key, err := s.writableProfileField(r)
	if err != nil {
		return err
	}
	changed, err := s.deleteProfileFieldRow(r.Context(), local, key)
	if err != nil {
		return err
	}
	s.profileChanged(r, key, changed)
	return httpx.OK(w, httpx.EmptyObject)
}

// writableProfileField checks that the caller may change keyName of the
// profile in the path, and returns the caller's localpart and the key.
func (s *Server) writableProfileField(r *http.Request) (local, key string, err error) {
	local, err = s.ownLocalpart(r, "change the profile")
	if err != nil {
		return "", "", err
	}
	key, err = unescapedParam(r, "keyName")
	if err != nil {
		return "", "", err
	}
	if err := validateProfileKey(key); err != nil {
		return "", "", err
	}
	// Spec: client-server-api, "Guest Access": guests may change only
	// their display name.
	if caller := authn.FromContext(r.Context()); caller.IsGuest && key != fieldDisplayName {
		return "", "", mxerr.New(mxerr.GuestAccessForbidden, "guests may only change their display name")
	}
	return local, key, nil
}

// profileChanged runs the profile-change hook after a committed change to
// a field that m.room.member events carry.
func (s *Server) profileChanged(r *http.Request, key string, changed bool) {
	if !changed || s.onProfileChange == nil {
		return
	}
	if key == fieldDisplayName || key == fieldAvatarURL {
		// The change is committed: a client hanging up must not cut the
		// propagation to its rooms short.
		ctx := context.WithoutCancel(r.Context())
		s.onProfileChange(ctx, authn.FromContext(r.Context()).UserID)
	}
}

// validateProfileKey checks a key name against the spec's grammar.
func validateProfileKey(key string) error {
	if len(key) > maxProfileKeyLength {
		return mxerr.New(errKeyTooLarge, "profile keys are at most %d bytes", maxProfileKeyLength)
	}
	if !profileKeyPattern.MatchString(key) {
		return mxerr.New(mxerr.InvalidParam, "%q is not a valid profile key", key)
	}
	return nil
}

// profileValue validates a field's new value and returns it compacted. An
// empty displayname or avatar_url is how clients have always removed
// them, so remove reports that the field should be deleted instead.
func profileValue(key string, raw json.RawMessage) (value json.RawMessage, remove bool, err error) {
	switch key {
	case fieldDisplayName, fieldAvatarURL, fieldTimeZone:
		var s string
		if err := json.Unmarshal(raw, &s); err != nil || bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
			return nil, false, mxerr.New(mxerr.BadJSON, "%s must be a string", key)
		}
		if s == "" && key != fieldTimeZone {
			return nil, true, nil
		}
		switch key {
		case fieldDisplayName:
			if utf8.RuneCountInString(s) > maxDisplayNameLength {
				return nil, false, mxerr.New(mxerr.InvalidParam, "displayname is longer than %d characters", maxDisplayNameLength)
			}
		case fieldAvatarURL:
			if len(s) > maxAvatarURLLength {
				return nil, false, mxerr.New(mxerr.InvalidParam, "avatar_url is longer than %d bytes", maxAvatarURLLength)
			}
			if !validMXCURI(s) {
				return nil, false, mxerr.New(mxerr.BadJSON, "avatar_url must be an mxc:// URI")
			}
		}
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, raw); err != nil {
		return nil, false, mxerr.New(mxerr.BadJSON, "%s is not valid JSON", key)
	}
	return compact.Bytes(), false, nil
}

// validMXCURI reports whether s is mxc://<server-name>/<media-id>.
// Spec: client-server-api, "Matrix Content (mxc://) URIs".
func validMXCURI(s string) bool {
	rest, ok := strings.CutPrefix(s, "mxc://")
	if !ok {
		return false
	}
	server, mediaID, ok := strings.Cut(rest, "/")
	if !ok || server == "" || mediaID == "" {
		return false
	}
	for _, c := range mediaID {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// localProfileOwner returns the localpart of a local user ID. Remote
// profiles are asked of their server (getProfile); without federation
// they answer 404, which the spec allows for users a server cannot find.
func (s *Server) localProfileOwner(userID string) (string, error) {
	local := s.localpart(userID)
	if local == "" {
		return "", mxerr.New(mxerr.NotFound, "profiles of users on other servers are out of reach: federation is off")
	}
	return local, nil
}
