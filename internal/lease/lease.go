// Package lease runs a singleton's work in at most one process of a
// split deployment at a time (docs/split.md). Every process that runs a
// component whose background work must not run twice calls Run for it;
// the one that takes the component's lease in Redis runs the work, the
// others wait as standbys and one of them takes over when the holder
// stops renewing (its process stopped or lost Redis).
//
// A lease is a Redis key holding the holder's random token, with a time
// to live of TTL. The holder renews it every TTL/5. The guarantee that
// two processes never run the work at once rests on timing, not on the
// key alone: the holder counts its lease as valid until TTL*2/3 after the
// start of its last successful renewal (a renewal sent at t sets the
// key's expiry to at least t+TTL), and when that passes without a newer
// renewal it cancels the work and waits for it to end. The standby can
// take the key only once it has expired, at least TTL after that
// renewal's start, so the holder has TTL/3 to stop its work before anyone
// else may start it. A holder that finds its key gone or taken stops at
// once. A holder that stops cleanly deletes its key, so a standby takes
// over within its poll interval rather than after TTL.
//
// Limits: the timing assumes the clocks of the processes run at the same
// rate (not that they agree), and a Redis that loses its keys (a restart
// without persistence) frees every lease at once: the holders then learn
// it at their next renewal, up to TTL/5 later.
package lease

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"
)

// Options tune Run; zero values take the defaults.
type Options struct {
	// TTL is the lease's time to live in Redis (default 15 s): a
	// standby takes over at most TTL after the holder's process died.
	TTL time.Duration
	// Poll is how often a standby tries to take the lease (default 1 s).
	Poll time.Duration
	// Logger receives the takeovers and losses; nil: slog.Default.
	Logger *slog.Logger
}

// renewScript extends the lease if token still holds it.
var renewScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0`)

// releaseScript deletes the lease if token still holds it.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0`)

// Run takes the lease key whenever it is free and runs work while it
// holds it, until ctx ends. work must return soon after its context is
// cancelled (it is cancelled when the lease is lost, and when ctx ends);
// it may be run again after a later takeover. Run returns once ctx has
// ended, work has returned and the lease is released.
func Run(ctx context.Context, client *redis.Client, key string, opts Options, work func(ctx context.Context)) {
	if opts.TTL <= 0 {
		opts.TTL = 15 * time.Second
	}
	if opts.Poll <= 0 {
		opts.Poll = time.Second
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("lease", key)
	for {
		token, start, err := acquire(ctx, client, key, opts.TTL)
		if err != nil && ctx.Err() == nil {
			log.Warn("cannot reach Redis to take the lease; retrying", "err", err)
		}
		if token != "" {
			log.Info("took the lease: running the singleton work here")
			hold(ctx, client, key, token, start, opts, log, work)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(opts.Poll):
		}
	}
}

// acquire sets key to a new token if it is free, and returns it with
// the time the request was sent (the key lives at least ttl from then);
// "" if it is not free.
func acquire(ctx context.Context, client *redis.Client, key string, ttl time.Duration) (string, time.Time, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", time.Time{}, err
	}
	token := hex.EncodeToString(b[:])
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, ttl/3)
	defer cancel()
	ok, err := client.SetNX(cctx, key, token, ttl).Result()
	if err != nil {
		// The key may have been set all the same (the answer was lost):
		// give it back, or it would stand unheld for a whole ttl.
		release(client, key, token)
		return "", start, err
	}
	if !ok {
		return "", start, nil
	}
	if time.Since(start) >= ttl/3 {
		// Too slow to count on: give it back (or let it expire).
		release(client, key, token)
		return "", start, errors.New("taking the lease took too long")
	}
	return token, start, nil
}

// hold runs work while the lease is renewed in time, then stops it and
// releases the lease; start is when the request that took it was sent.
func hold(ctx context.Context, client *redis.Client, key, token string, start time.Time, opts Options, log *slog.Logger, work func(context.Context)) {
	workCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		work(workCtx)
	}()
	valid := opts.TTL * 2 / 3
	// expiry fires when the lease may no longer be counted on, valid
	// after the start of the request that took or last renewed it. It
	// is watched apart from the renewals, which a hung Redis can hold up.
	expiry := time.NewTimer(valid - time.Since(start))
	defer expiry.Stop()
	// The renewals go on after ctx ends, until the work has stopped (see
	// below); stopRenewing ends them.
	renewCtx, stopRenewing := context.WithCancel(context.WithoutCancel(ctx))
	renewals := make(chan renewal)
	go renewLoop(renewCtx, client, key, token, opts.TTL, renewals)
	defer stopRenewing()
	lost := func(reason string) {
		log.Error("lost the lease: stopping the singleton work", "reason", reason)
	}
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-done:
			break loop
		case <-expiry.C:
			lost("not renewed in time")
			break loop
		case r := <-renewals:
			if r.err != nil {
				log.Warn("renewing the lease failed; retrying", "err", r.err)
				continue
			}
			if !r.held {
				lost("the key is gone or held by another process")
				break loop
			}
			// Valid until valid after this renewal's start, unless that
			// moment has passed already.
			left := valid - time.Since(r.start)
			if left <= 0 {
				lost("renewal answered too late")
				break loop
			}
			expiry.Reset(left)
		}
	}
	stop()
	// While the cancelled work winds down (a shutdown, or work that
	// returned), the lease is still renewed, so that a standby does not
	// start the work while it still runs here. A lease already lost
	// cannot be kept: the work had valid's margin (ttl/3) to stop.
	for stopped := false; !stopped; {
		select {
		case <-done:
			stopped = true
		case r := <-renewals:
			if r.err == nil && r.held {
				if left := valid - time.Since(r.start); left > 0 {
					expiry.Reset(left)
				}
			}
		case <-expiry.C:
			log.Warn("the singleton work is still stopping after its lease could no longer be counted on")
		}
	}
	stopRenewing()
	release(client, key, token)
}

// renewal is the outcome of one renewal sent at start.
type renewal struct {
	start time.Time
	held  bool // the key was still the holder's and is extended
	err   error
}

// renewLoop renews the lease every ttl/5 until ctx ends, reporting each
// outcome on out.
func renewLoop(ctx context.Context, client *redis.Client, key, token string, ttl time.Duration, out chan<- renewal) {
	tick := time.NewTicker(ttl / 5)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		r := renewal{start: time.Now()}
		rctx, cancel := context.WithTimeout(ctx, ttl/3)
		n, err := renewScript.Run(rctx, client, []string{key}, token, ttl.Milliseconds()).Int64()
		cancel()
		r.held, r.err = n == 1, err
		select {
		case out <- r:
		case <-ctx.Done():
			return
		}
	}
}

// release deletes the lease if it is still token's, so a standby takes
// over without waiting for the TTL.
func release(client *redis.Client, key, token string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = releaseScript.Run(ctx, client, []string{key}, token).Err()
}
