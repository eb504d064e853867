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
	bg, cancel := context.WithCancel(context.Background())
	s.stop = cancel
	for _, reg := range deps.Registry.All() {
		if deps.NoSenders {
			break
		}
		if reg.URL == "" {
			continue // Spec: no URL, nothing is pushed.
		}
		if reg.ReceiveEphemeral && deps.Ephemeral == nil || reg.ToDevice && (deps.ToDevice == nil || deps.Keys == nil) {
			cancel()
			return nil, fmt.Errorf("appservice: %s receives ephemeral data but Deps.Ephemeral, Deps.ToDevice or Deps.Keys is nil", reg.ID)
		}
		snd := &sender{s: s, reg: reg}
		if err := snd.init(ctx); err != nil {
			cancel()
			return nil, err
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			snd.run(bg)
		}()
	}
	return s, nil
}

// Close stops the senders and waits for them.
func (s *Server) Close() error {
	s.stop()
	s.wg.Wait()
	return nil
}

// Registry is the registered services.
func (s *Server) Registry() *Registry { return s.deps.Registry }
