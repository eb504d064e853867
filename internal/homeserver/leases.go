package homeserver

import (
	"context"
	"log/slog"
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
	l := &leaseRunner{client: redis.NewClient(ropts)}
	opts := leaseOptions
	opts.Logger = logger
	for _, s := range singletons {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			lease.Run(ctx, l.client, cfg.Global.RedisPrefix+"lease:"+s.name, opts, s.run)
		}()
	}
	return l, nil
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
