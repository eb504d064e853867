package authn

import (
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/internal/mxerr"
)

// Guests is one component's list of the endpoints a guest may call, by
// method and route pattern exactly as registered with chi. Middleware
// answers a guest 403 M_GUEST_ACCESS_FORBIDDEN on every other endpoint it
// guards, before the handler runs, so a refused request writes nothing.
// An endpoint added behind Middleware is thus refused to guests until it
// is listed. A nil or empty Guests allows guests nothing.
//
// Each component keeps its list beside its routes; handlers may refuse
// guests further (a profile field other than displayname, a join of a
// room not open to guests).
//
// Spec: client-server-api, "Guest Access", "Client behaviour": guests
// "will only have access to a subset of the API".
type Guests struct {
	allowed  map[guestRoute]bool // immutable once the routes are registered
	everyone bool                // every endpoint (Optional's)
}

// everyEndpoint lets guests call every endpoint: Optional's endpoints
// serve callers without a token, so refusing a guest's token would only
// make it leave the token out.
var everyEndpoint = &Guests{everyone: true}

type guestRoute struct{ method, pattern string }

// Allow lets guests call method on each pattern. Call it before the
// routes serve requests.
func (g *Guests) Allow(method string, patterns ...string) {
	if g.allowed == nil {
		g.allowed = make(map[guestRoute]bool)
	}
	for _, p := range patterns {
		g.allowed[guestRoute{method, p}] = true
	}
}

// Allows reports whether a guest may call the endpoint registered as
// method and pattern.
func (g *Guests) Allows(method, pattern string) bool {
	return g != nil && (g.everyone || g.allowed[guestRoute{method, pattern}])
}

// ErrGuestForbidden is the answer to a guest calling an endpoint guests
// may not use.
func ErrGuestForbidden() error {
	return mxerr.New(mxerr.GuestAccessForbidden, "guests may not use this endpoint")
}

// guestAllowed reports whether g lets a guest make request r. It reads
// the pattern chi matched, so Middleware must sit on an inline group
// (r.Group, r.With), whose middleware chi runs after routing; anywhere
// else no pattern is known yet and the guest is refused.
func (g *Guests) guestAllowed(r *http.Request) bool {
	if g != nil && g.everyone {
		return true
	}
	rctx := chi.RouteContext(r.Context())
	if rctx == nil {
		return false
	}
	var pattern string
	switch len(rctx.RoutePatterns) {
	case 0:
		return false
	case 1:
		pattern = rctx.RoutePatterns[0] // as registered, trailing '/' kept
	default:
		pattern = rctx.RoutePattern() // a mounted sub-router's route
	}
	return g.Allows(r.Method, pattern)
}
