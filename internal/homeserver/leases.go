package homeserver

import (
	"context"
	"log/slog"
	"slices"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/lease"
)

// singleton is background work that must run in one process at a time
// (docs/split.md, "Who owns which background work").
type singleton struct {
	// name is the component; the lease key is <redis_prefix>lease:<name>.
	name string
	// run does the work until its context ends.
	run func(ctx context.Context)
}

// leaseRunner runs each singleton of this process under its lease
// (internal/lease): in a deployment where several processes run the
// same component, one runs the work and the others stand by.
type leaseRunner struct {
	client *redis.Client
	wg     sync.WaitGroup
	mu     sync.Mutex
	held   map[string]bool // the singletons running here; guarded by mu
}

// leaseOptions are the lease timings; tests shorten them.
var leaseOptions = lease.Options{}

// startLeases starts competing for each singleton's lease until ctx ends.
func startLeases(ctx context.Context, cfg *config.Config, logger *slog.Logger, singletons []singleton) (*leaseRunner, error) {
	ropts, err := redis.ParseURL(cfg.Global.RedisURL)
	if err != nil {
		return nil, err
	}
	ropts.ContextTimeoutEnabled = true
	l := &leaseRunner{client: redis.NewClient(ropts), held: map[string]bool{}}
	opts := leaseOptions
	opts.Logger = logger
	for _, s := range singletons {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			lease.Run(ctx, l.client, cfg.Global.RedisPrefix+"lease:"+s.name, opts, func(ctx context.Context) {
				l.setHeld(s.name, true)
				defer l.setHeld(s.name, false)
				s.run(ctx)
			})
		}()
	}
	return l, nil
}

func (l *leaseRunner) setHeld(name string, held bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.held[name] = held
}

// HeldLeases returns the components whose singleton work runs in this
// process now (it holds their lease), sorted; nil without Redis, where
// every component's work runs in the process that runs the component.
func (hs *Homeserver) HeldLeases() []string {
	l := hs.leases
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var names []string
	for name, held := range l.held {
		if held {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// close waits for the singletons to stop once the context given to
// startLeases has ended, and disconnects. A nil runner does nothing.
func (l *leaseRunner) close() error {
	if l == nil {
		return nil
	}
	l.wg.Wait()
	return l.client.Close()
}
