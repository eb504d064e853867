package httpx

import (
	"net/http"
	"sync/atomic"
)

// Activity counts the moments a request started or finished, so that a
// background task can tell that the server has been quiet (the count did
// not move) without a clock read per request: cmd/myelin's idle-time
// collection starts a garbage collection in such a spell. A long poll that
// waits counts only when it starts and when it answers. The zero value is
// ready to use; it is safe for concurrent use.
type Activity struct {
	events atomic.Uint64
}

// Middleware counts every request passing through next, at its start and
// at its end.
func (a *Activity) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.events.Add(1)
		defer a.events.Add(1)
		next.ServeHTTP(w, r)
	})
}

// Count is the number of request starts and ends so far. Only its changes
// mean anything.
func (a *Activity) Count() uint64 { return a.events.Load() }
