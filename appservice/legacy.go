package appservice

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// Legacy routes. Spec: application-service-api, "Legacy routes": the
// homeserver tries the /_matrix/app/v1 path first; when the service
// answers it with an HTTP status that does not indicate success ("404,
// 500, 501, etc"), it falls back to the route older drafts used, which
// takes the same request and gives the same answer:
//
//	/_matrix/app/v1/transactions/{txnId}        → /transactions/{txnId}
//	/_matrix/app/v1/users/{userId}              → /users/{userId}
//	/_matrix/app/v1/rooms/{roomAlias}           → /rooms/{roomAlias}
//	/_matrix/app/v1/thirdparty/...              → /_matrix/app/unstable/thirdparty/...
//
// Only a status triggers the fallback: a service that cannot be reached,
// or does not answer in time, would not answer the other path either.
// /_matrix/app/v1/ping has no legacy route and never falls back.
//
// A service whose legacy route answered with success after its v1 path
// failed is remembered as legacy for that route family for legacyRetry:
// its requests go to the legacy route directly, then the v1 path is
// tried first again ("Homeservers should periodically try again for the
// newer endpoints because the application service may have been
// updated"). A legacy route's failure is the answer (a 404 may be a
// lookup's "not found"); a service never remembered so gets a v1 failure
// followed by one legacy request each time.

// legacyFamily names a group of routes that moved together.
type legacyFamily string

const (
	familyTransactions legacyFamily = "transactions"
	familyUsers        legacyFamily = "users"
	familyRooms        legacyFamily = "rooms"
	familyThirdParty   legacyFamily = "thirdparty"
)

// legacyRetry is how long a service remembered as legacy for a family is
// sent there directly before the v1 path is tried again.
const legacyRetry = 10 * time.Minute

// legacyMemory remembers the services answering a family on its legacy
// route only. The zero value is ready; a nil now means time.Now and a zero
// retry legacyRetry.
type legacyMemory struct {
	mu    sync.Mutex
	until map[legacyKey]time.Time // guarded by mu
	now   func() time.Time
	retry time.Duration
}

type legacyKey struct {
	service string
	family  legacyFamily
}

func (m *legacyMemory) clock() time.Time {
	if m.now != nil {
		return m.now()
	}
	return time.Now()
}

// isLegacy reports whether reg is to be sent family's legacy route
// directly.
func (m *legacyMemory) isLegacy(reg *Registration, family legacyFamily) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := legacyKey{reg.ID, family}
	until, ok := m.until[k]
	if ok && !m.clock().Before(until) {
		delete(m.until, k)
		return false
	}
	return ok
}

// remember marks reg as answering family's calls on the legacy routes,
// for the next retry period.
func (m *legacyMemory) remember(reg *Registration, family legacyFamily) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := legacyKey{reg.ID, family}
	if m.until == nil {
		m.until = map[legacyKey]time.Time{}
	}
	retry := m.retry
	if retry <= 0 {
		retry = legacyRetry
	}
	m.until[k] = m.clock().Add(retry)
}

// success is a status that indicates success: any 2xx.
func success(status int) bool { return status >= 200 && status < 300 }

// doVersioned makes a homeserver -> service request to v1Path (a path
// under /_matrix/app/v1), falling back to legacyPath as the spec's
// "Legacy routes" say (see above). query is the query string of both
// (nil: none). The caller reads and closes the response as it would
// have the v1 one's.
func (s *Server) doVersioned(ctx context.Context, reg *Registration, family legacyFamily, method, v1Path, legacyPath string, query url.Values, body []byte) (*http.Response, error) {
	if s.legacy.isLegacy(reg, family) {
		return s.doLegacy(ctx, reg, method, legacyPath, query, body)
	}
	resp, err := s.do(ctx, reg, method, withQuery(reg.URL+v1Path, query), body)
	if err != nil || success(resp.StatusCode) {
		return resp, err
	}
	// Drain (bounded) so that the connection is reused for the fallback.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	v1Status := resp.StatusCode
	resp, err = s.doLegacy(ctx, reg, method, legacyPath, query, body)
	if err != nil {
		return nil, err
	}
	if success(resp.StatusCode) {
		s.log.Info("application service answered on its legacy route after the v1 path failed; using the legacy route for a while",
			"appservice", reg.ID, "path", v1Path, "v1_status", v1Status, "legacy_path", legacyPath)
		s.legacy.remember(reg, family)
	}
	return resp, nil
}

// doLegacy makes a request to a legacy route. The legacy versions of the
// spec authenticated the homeserver with an access_token query parameter
// rather than the Authorization header; both are sent, as the spec
// encourages for compatibility (application-service-api,
// "Authorization"). The token is kept out of any error returned, as
// those are logged.
func (s *Server) doLegacy(ctx context.Context, reg *Registration, method, path string, query url.Values, body []byte) (*http.Response, error) {
	q := url.Values{}
	for k, v := range query {
		q[k] = v
	}
	q.Set("access_token", reg.HSToken)
	resp, err := s.do(ctx, reg, method, reg.URL+path+"?"+q.Encode(), body)
	if err != nil {
		if ue := (*url.Error)(nil); errors.As(err, &ue) {
			ue.URL = reg.URL + path
		}
		return nil, err
	}
	return resp, nil
}

// withQuery appends query to u.
func withQuery(u string, query url.Values) string {
	if len(query) > 0 {
		return u + "?" + query.Encode()
	}
	return u
}
