package appservice

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/myelin-chat/myelin/internal/notifier"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Rooms is what the sender reads from the roomserver.
type Rooms interface {
	StreamPosition(ctx context.Context) (int64, error)
	EventsAfter(ctx context.Context, after int64, limit int) ([]*roomserver.Event, error)
	JoinedUsers(ctx context.Context, roomID string) ([]string, error)
	JoinedRooms(ctx context.Context, userID string) ([]string, error)
}

// Deps is everything the application service component needs.
type Deps struct {
	// NoSenders leaves out the senders of transactions: a process of a
	// split deployment that does not run the appservice component
	// answers its library calls (user and alias queries) only. The
	// senders must run in exactly one process.
	NoSenders  bool
	DB         *storage.DB
	ServerName string
	Registry   *Registry
	Rooms      Rooms
	// Notifier wakes the senders when the room event stream advances; they
	// also poll, so a lost notification only delays.
	Notifier notifier.Broadcaster
	// Client makes the requests to the services; nil: a client with a
	// 60-second timeout.
	Client *http.Client
	Logger *slog.Logger
	// MinBackoff and MaxBackoff bound the wait between retries of a failed
	// transaction (it doubles on each failure). Zero: 1s and 5 minutes.
	MinBackoff, MaxBackoff time.Duration
	// RoomAliases, if non-nil, lists a room's local aliases, so that events
	// in rooms with an alias in a service's alias namespace reach it.
	RoomAliases func(ctx context.Context, roomID string) ([]string, error)
	// Ephemeral is read for the services registered with
	// receive_ephemeral; it is required when one has a URL.
	Ephemeral Ephemeral
	// ToDevice is read for the services that opted in to to-device
	// messages (Registration.ToDevice); required when one has a URL.
	ToDevice ToDevice
	// Keys is read for the same services, for MSC3202's device lists and
	// key counts; required when one has a URL.
	Keys Keys
	// KeyCountWakes, if non-nil, wakes the senders when a key count of a
	// service's user changes (the device-list stream wakes them through
	// Notifier). They also poll.
	KeyCountWakes notifier.Broadcaster
}

// Server runs the transaction senders and answers the appservice
// endpoints.
type Server struct {
	deps   Deps // immutable
	log    *slog.Logger
	client *http.Client
	stop   context.CancelFunc
	wg     sync.WaitGroup
	// legacy remembers the services answering on legacy routes only
	// (legacy.go).
	legacy legacyMemory
}

// New runs the migrations and starts one sender per registered service
// that has a URL. Close stops them.
func New(ctx context.Context, deps Deps) (*Server, error) {
	if deps.DB == nil || deps.Rooms == nil || deps.ServerName == "" || deps.Notifier == nil {
		return nil, errors.New("appservice: DB, Rooms, ServerName and Notifier are required")
	}
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return nil, err
	}
	if err := deps.DB.Migrate(ctx, "appservice", sub); err != nil {
		return nil, err
	}
	if deps.MinBackoff <= 0 {
		deps.MinBackoff = time.Second
	}
	if deps.MaxBackoff <= 0 {
		deps.MaxBackoff = 5 * time.Minute
	}
	s := &Server{deps: deps, log: deps.Logger, client: deps.Client}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.client == nil {
		s.client = &http.Client{Timeout: 60 * time.Second}
	}
	for _, reg := range deps.Registry.All() {
		if reg.URL != "" && (reg.ReceiveEphemeral && deps.Ephemeral == nil || reg.ToDevice && (deps.ToDevice == nil || deps.Keys == nil)) {
			return nil, fmt.Errorf("appservice: %s receives ephemeral data but Deps.Ephemeral, Deps.ToDevice or Deps.Keys is nil", reg.ID)
		}
	}
	bg, cancel := context.WithCancel(context.Background())
	s.stop = cancel
	if deps.NoSenders {
		return s, nil
	}
	if err := s.startSenders(ctx, bg, &s.wg); err != nil {
		cancel()
		return nil, err
	}
	return s, nil
}

// startSenders starts one sender per registered service that has a URL,
// each running until bg ends, counted in wg. ctx bounds their start.
func (s *Server) startSenders(ctx, bg context.Context, wg *sync.WaitGroup) error {
	for _, reg := range s.deps.Registry.All() {
		if reg.URL == "" {
			continue // Spec: no URL, nothing is pushed.
		}
		snd := &sender{s: s, reg: reg}
		if err := snd.init(ctx); err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			snd.run(bg)
		}()
	}
	return nil
}

// InitPositions gives each service seen for the first time its
// positions at the current end of the streams (as a sender's start
// does), for a server built with NoSenders whose senders run later under
// a lease: events written before they start are still pushed to a new
// service. It changes nothing for a service that has positions.
func (s *Server) InitPositions(ctx context.Context) error {
	for _, reg := range s.deps.Registry.All() {
		if reg.URL == "" {
			continue
		}
		if err := (&sender{s: s, reg: reg}).init(ctx); err != nil {
			return err
		}
	}
	return nil
}

// RunSenders runs the transaction senders until ctx ends and they have
// stopped, for a server built with NoSenders in a process that holds the
// senders' lease (split mode: internal/lease). Each sender starts from
// the positions its last holder committed, so a takeover neither skips
// nor repeats a committed transaction; one in flight when the lease was
// lost is sent again with its transaction ID, which the service
// recognises. Spec: application-service-api, "Pushing events": the
// homeserver retries a transaction with the same ID.
func (s *Server) RunSenders(ctx context.Context) {
	for ctx.Err() == nil {
		var wg sync.WaitGroup
		run, stop := context.WithCancel(ctx)
		err := s.startSenders(ctx, run, &wg)
		if err == nil {
			<-ctx.Done()
		}
		stop()
		wg.Wait() // a failed start stops the senders it started
		if err == nil {
			return
		}
		s.log.Error("starting the application service senders failed; retrying", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// Close stops the senders and waits for them.
func (s *Server) Close() error {
	s.stop()
	s.wg.Wait()
	return nil
}

// Registry is the registered services.
func (s *Server) Registry() *Registry { return s.deps.Registry }
