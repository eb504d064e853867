package roomserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// policyBackoff remembers, in memory, the policy servers that could not
// be reached (a connection failure or a timeout: no answer at all), so
// that each event of their rooms does not wait for its own request to
// fail. After such a failure a server is not asked again for a backoff
// that starts at policyBackoffMin and doubles with each further failure
// up to policyBackoffMax; a request in that time fails at once, as an
// unreachable server's does (a local send: 502 M_UNKNOWN; a federation
// event: soft-failed). The first answer of any kind (a signature or an
// error answer) forgets the failures. An answer that could not be used
// (a bad body) is not a connection failure and is not remembered.
//
// Bound: at most maxPolicyBackoffServers servers; past it, servers whose
// backoff has run out are forgotten first, then any.
type policyBackoff struct {
	mu      sync.Mutex
	servers map[string]*policyFailures // guarded by mu
}

// policyFailures is a server's run of connection failures.
type policyFailures struct {
	count int       // failures in a row
	until time.Time // not asked again before this
}

const (
	policyBackoffMin        = 5 * time.Second
	policyBackoffMax        = 2 * time.Minute
	maxPolicyBackoffServers = 1024
)

// errPolicyBackoff is a request not made: the server failed recently.
var errPolicyBackoff = errors.New("policy server failed recently")

// check returns an error wrapping errPolicyBackoff while server is in
// its backoff at now, nil otherwise.
func (b *policyBackoff) check(server string, now time.Time) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	f := b.servers[server]
	if f == nil || !now.Before(f.until) {
		return nil
	}
	return fmt.Errorf("%w: %s could not be reached %d times in a row; not asked again until %s",
		errPolicyBackoff, server, f.count, f.until.UTC().Format(time.RFC3339))
}

// record notes the outcome of a request to server made at now: err nil
// or an answer resets it; a connection failure or timeout (unreachable)
// starts or grows its backoff. callerGone says the caller's own context
// ended, which says nothing about the server.
func (b *policyBackoff) record(server string, now time.Time, err error, callerGone bool) {
	if callerGone || errors.Is(err, errPolicyBackoff) {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !policyUnreachable(err) {
		delete(b.servers, server)
		return
	}
	if b.servers == nil {
		b.servers = map[string]*policyFailures{}
	}
	f := b.servers[server]
	if f == nil {
		if len(b.servers) >= maxPolicyBackoffServers {
			b.evict(now)
		}
		f = &policyFailures{}
		b.servers[server] = f
	}
	f.count++
	wait := policyBackoffMax
	if f.count <= 16 {
		wait = min(policyBackoffMin<<(f.count-1), policyBackoffMax)
	}
	f.until = now.Add(wait)
}

// evict makes room for one server (mu held): the servers whose backoff
// ran out, or else one arbitrary server.
func (b *policyBackoff) evict(now time.Time) {
	for server, f := range b.servers {
		if !now.Before(f.until) {
			delete(b.servers, server)
		}
	}
	for server := range b.servers {
		if len(b.servers) < maxPolicyBackoffServers {
			return
		}
		delete(b.servers, server)
	}
}

// policyUnreachable reports whether err says that the server could not
// be reached or did not answer in time: a network error (dial, DNS,
// connection reset, timeout) or the request's deadline.
func policyUnreachable(err error) bool {
	if err == nil {
		return false
	}
	var refusal *PolicyRefusal
	if errors.As(err, &refusal) {
		return false
	}
	var netErr net.Error
	return errors.As(err, &netErr) || errors.Is(err, context.DeadlineExceeded)
}
