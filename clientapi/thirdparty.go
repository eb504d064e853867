package clientapi

import (
	"net/http"
	"net/url"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/appservice"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
)

// Third-party networks: the protocols, users and locations the registered
// application services bridge, asked of them (appservice/thirdparty.go).
// Every endpoint needs an access token, and none is on the spec's list of
// endpoints open to guests, so the guest gate refuses guests
// (guest_gate.go).
//
// Spec: client-server-api, "Third-party Networks".
func (s *Server) thirdPartyRoutes(r chi.Router) {
	const tp = "/_matrix/client/v3/thirdparty"
	handle(r, http.MethodGet, tp+"/protocols", s.thirdPartyProtocols)
	handle(r, http.MethodGet, tp+"/protocol/{protocol}", s.thirdPartyProtocol)
	handle(r, http.MethodGet, tp+"/location/{protocol}", s.thirdPartyLookup(appservice.ThirdPartyLocation))
	handle(r, http.MethodGet, tp+"/user/{protocol}", s.thirdPartyLookup(appservice.ThirdPartyUser))
	handle(r, http.MethodGet, tp+"/location", s.thirdPartyReverse(appservice.ThirdPartyLocation, "alias"))
	handle(r, http.MethodGet, tp+"/user", s.thirdPartyReverse(appservice.ThirdPartyUser, "userid"))
}

// thirdPartyProtocols lists every protocol the services bridge, merged
// per protocol from the services that registered it.
// Spec: client-server-api, "GET /_matrix/client/v3/thirdparty/protocols".
func (s *Server) thirdPartyProtocols(w http.ResponseWriter, r *http.Request) error {
	if s.asQueries == nil {
		return httpx.OK(w, httpx.EmptyObject)
	}
	return httpx.OK(w, s.asQueries.Protocols(r.Context()))
}

// thirdPartyProtocol is one protocol's metadata; 404 M_NOT_FOUND when no
// service bridges it (or none of them answered).
// Spec: client-server-api, "GET /_matrix/client/v3/thirdparty/protocol/{protocol}".
func (s *Server) thirdPartyProtocol(w http.ResponseWriter, r *http.Request) error {
	protocol, err := unescapedParam(r, "protocol")
	if err != nil {
		return err
	}
	if s.asQueries != nil {
		if p, ok := s.asQueries.Protocol(r.Context(), protocol); ok {
			return httpx.OK(w, p)
		}
	}
	return mxerr.New(mxerr.NotFound, "unknown protocol %q", protocol)
}

// thirdPartyFields is the query of a lookup as it goes to the services:
// the client's fields, less the access token, and, when the caller is an
// application service, less the identity-assertion parameters, which
// are the homeserver's (application-service-api, "Identity assertion").
// Spec: client-server-api, "GET /_matrix/client/v3/thirdparty/user/{protocol}"
// (fields: "passed to the AS to help identify the user").
func thirdPartyFields(r *http.Request) url.Values {
	q := r.URL.Query()
	q.Del("access_token")
	if caller(r).AppServiceID != "" {
		q.Del("user_id")
		q.Del("device_id")
		q.Del("org.matrix.msc3202.device_id")
	}
	return q
}

// thirdPartyLookup answers GET /thirdparty/{location,user}/{protocol}: the
// results of every service of the protocol, concatenated. 404
// M_NOT_FOUND when nothing was found, as the spec has it ("No portal
// rooms were found", "The Matrix User ID was not found"), and for a
// protocol no service bridges.
// Spec: client-server-api, "GET /_matrix/client/v3/thirdparty/location/{protocol}"
// and "GET /_matrix/client/v3/thirdparty/user/{protocol}".
func (s *Server) thirdPartyLookup(kind appservice.ThirdPartyKind) httpx.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		protocol, err := unescapedParam(r, "protocol")
		if err != nil {
			return err
		}
		if s.asQueries == nil {
			return mxerr.New(mxerr.NotFound, "unknown protocol %q", protocol)
		}
		results, known := s.asQueries.ThirdPartyLookup(r.Context(), kind, protocol, thirdPartyFields(r))
		if !known {
			return mxerr.New(mxerr.NotFound, "unknown protocol %q", protocol)
		}
		if len(results) == 0 {
			return mxerr.New(mxerr.NotFound, "no third-party %s found", kind)
		}
		return httpx.OK(w, results)
	}
}

// thirdPartyReverse answers GET /thirdparty/location?alias= and GET
// /thirdparty/user?userid=: the third-party locations of a room alias,
// or users of a user ID, from every service that bridges a protocol. The
// parameter is required (400 M_MISSING_PARAM; M_INVALID_PARAM when it is
// not an alias or user ID); 404 M_NOT_FOUND when nothing was found.
// Spec: client-server-api, "GET /_matrix/client/v3/thirdparty/location"
// and "GET /_matrix/client/v3/thirdparty/user".
func (s *Server) thirdPartyReverse(kind appservice.ThirdPartyKind, param string) httpx.HandlerFunc {
	sigil := "@"
	if kind == appservice.ThirdPartyLocation {
		sigil = "#"
	}
	return func(w http.ResponseWriter, r *http.Request) error {
		value := r.URL.Query().Get(param)
		if value == "" {
			return mxerr.New(mxerr.MissingParam, "%s is required", param)
		}
		if !strings.HasPrefix(value, sigil) || !strings.Contains(value, ":") {
			return mxerr.New(mxerr.InvalidParam, "%s %q is not a valid identifier", param, value)
		}
		var results []map[string]any
		if s.asQueries != nil {
			results, _ = s.asQueries.ThirdPartyLookup(r.Context(), kind, "", url.Values{param: {value}})
		}
		if len(results) == 0 {
			return mxerr.New(mxerr.NotFound, "no third-party %s found for %s", kind, value)
		}
		return httpx.OK(w, results)
	}
}
