// Package authn carries the authenticated caller of a client-server
// request. clientapi owns access tokens and implements Verifier; every
// component that serves authenticated endpoints wraps them in Middleware,
// handing it the list of those endpoints guests may call (Guests), and
// reads the caller with FromContext.
//
// Spec: client-server-api, "Client Authentication".
package authn

import (
	"context"
	"net/http"
	"strings"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
)

// Device is the user and device behind an access token.
type Device struct {
	UserID   string
	DeviceID string
	IsGuest  bool
	// SessionID identifies the access token's session (for logout).
	SessionID int64
	// AppServiceID is set when an application service's as_token made
	// the request (identity assertion); SessionID is then 0.
	AppServiceID string
	// AppServiceRateLimited is the service's rate_limited setting.
	AppServiceRateLimited bool
}

// Verifier resolves an access token. It returns an *mxerr.Error with
// M_UNKNOWN_TOKEN (soft_logout set where the spec says) for tokens that
// are unknown, expired or belong to a deactivated account.
type Verifier interface {
	VerifyAccessToken(ctx context.Context, token string, r *http.Request) (*Device, error)
}

type ctxKey struct{}

// WithDevice returns ctx carrying d.
func WithDevice(ctx context.Context, d *Device) context.Context {
	return context.WithValue(ctx, ctxKey{}, d)
}

// FromContext returns the caller Middleware authenticated, or nil.
func FromContext(ctx context.Context) *Device {
	d, _ := ctx.Value(ctxKey{}).(*Device)
	return d
}

// Token extracts the access token from the Authorization header or, for
// older clients, the access_token query parameter.
func Token(r *http.Request) (string, bool) {
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, token, ok := strings.Cut(h, " ")
		if ok && strings.EqualFold(scheme, "Bearer") && token != "" {
			return strings.TrimSpace(token), true
		}
		return "", false
	}
	if t := r.URL.Query().Get("access_token"); t != "" {
		return t, true
	}
	return "", false
}

// Middleware requires a valid access token and puts its Device in the
// request context. A guest's request goes on only to the endpoints
// guests lists; on any other it is answered 403 M_GUEST_ACCESS_FORBIDDEN
// and the handler does not run (see Guests, which also says where
// Middleware must sit).
func Middleware(v Verifier, guests *Guests) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			token, ok := Token(r)
			if !ok {
				httpx.WriteError(w, r, mxerr.New(mxerr.MissingToken, "missing access token"))
				return
			}
			d, err := v.VerifyAccessToken(r.Context(), token, r)
			if err != nil {
				httpx.WriteError(w, r, err)
				return
			}
			if d.IsGuest && !guests.guestAllowed(r) {
				httpx.WriteError(w, r, ErrGuestForbidden())
				return
			}
			// The caller and its log attribute in one context node.
			ctx := httpx.WithValueAndLoggerAttr(r.Context(), ctxKey{}, d, "user", d.UserID)
			next.ServeHTTP(w, r.WithContext(ctx))
		})
	}
}

// Optional is Middleware for endpoints that also serve anonymous callers:
// a token, if present, must be valid. Guests may call them all: a guest
// could as well leave its token out.
func Optional(v Verifier) func(http.Handler) http.Handler {
	required := Middleware(v, everyEndpoint)
	return func(next http.Handler) http.Handler {
		withAuth := required(next)
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if _, ok := Token(r); ok {
				withAuth.ServeHTTP(w, r)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}
