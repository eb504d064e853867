// Package homeserver assembles every component into one process: it opens
// the database, loads the signing key, builds the components in dependency
// order and mounts their routes on one router. cmd/myelin and the
// end-to-end tests both start servers through it.
package homeserver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/appservice"
	"github.com/myelin-chat/myelin/clientapi"
	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/federationapi"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/notifier"
	"github.com/myelin-chat/myelin/internal/signing"
	"github.com/myelin-chat/myelin/keyserver"
	"github.com/myelin-chat/myelin/mediaapi"
	"github.com/myelin-chat/myelin/pushserver"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/syncapi"
)

// Homeserver is a running set of components sharing one database.
type Homeserver struct {
	Config    *config.Config
	DB        *storage.DB
	Key       *signing.Key
	ClientAPI *clientapi.Server
	Rooms     *roomserver.Server
	// Sync is nil in a process that does not run the syncapi component
	// (global.components).
	Sync *syncapi.Server
	// Notifier carries "stream S advanced to N" between components (and,
	// with global.redis_url, between processes).
	Notifier  notifier.Broadcaster
	KeyServer *keyserver.Server
	// Federation is the server-server API; its Joiner and EDUQueue are
	// what other components call to reach other servers.
	Federation *federationapi.Server
	Media      *mediaapi.Server
	// Push evaluates push rules, counts unread notifications and
	// delivers to push gateways.
	Push *pushserver.Server
	// AppServices pushes transactions to application services and
	// answers their endpoints.
	AppServices *appservice.Server
	Log         *slog.Logger
	// FederationClient makes requests to other homeservers, trusting the
	// system roots plus federation_api.trusted_ca_file.
	FederationClient *http.Client
	// Activity counts the starts and ends of HTTP requests on every
	// listener: cmd/myelin collects garbage when it has not moved for a
	// while (idlegc.go).
	Activity *httpx.Activity

	handler http.Handler
	// federationTLS serves the federation listener; nil without one.
	federationTLS *tls.Config
	// baseCtx is the parent of every request context; it is cancelled
	// when shutdown starts so long-polls return at once.
	baseCtx    context.Context
	cancelBase context.CancelFunc
	// fedWakes carries the federation API's wake-ups between processes
	// (federationapi Deps.Wakes); nil in one process.
	fedWakes notifier.Broadcaster
	// typingLog orders the typing changes of every process (with
	// global.redis_url); nil in one process.
	typingLog *notifier.Log
	// leases runs the singletons this process may run (split mode); nil
	// without Redis.
	leases *leaseRunner
}

// New opens the database and builds every component.
func New(ctx context.Context, cfg *config.Config, logger *slog.Logger) (*Homeserver, error) {
	if logger == nil {
		logger = slog.Default()
	}
	key, created, err := signing.LoadOrCreate(cfg.Global.SigningKeyPath)
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	if created {
		logger.Info("created a new server signing key", "path", cfg.Global.SigningKeyPath, "key_id", key.ID)
	}
	fedTLS, err := federationServerTLS(cfg, logger)
	if err != nil {
		return nil, err
	}
	fedClient, err := federationClient(cfg.Federation)
	if err != nil {
		return nil, err
	}
	db, err := storage.Open(ctx, StorageOptions(cfg.Database))
	if err != nil {
		return nil, err
	}
	hs, err := assemble(ctx, cfg, logger, db, key, fedClient)
	if err != nil {
		db.Close()
		return nil, err
	}
	hs.federationTLS = fedTLS
	return hs, nil
}

// StorageOptions maps the database config section to storage options.
func StorageOptions(d config.Database) storage.Options {
	return storage.Options{
		Engine:       storage.Engine(d.Engine),
		SQLitePath:   d.SQLitePath,
		PostgresURL:  d.PostgresURL,
		MaxOpenConns: d.MaxOpenConns,
	}
}

func assemble(ctx context.Context, cfg *config.Config, logger *slog.Logger, db *storage.DB, key *signing.Key, fedClient *http.Client) (*Homeserver, error) {
	clientIP, err := httpx.NewClientIPResolver(cfg.Global.TrustedProxies)
	if err != nil {
		return nil, err
	}
	// baseCtx is the lifetime of background work and the parent of
	// every request; cancelled at shutdown.
	baseCtx, cancel := context.WithCancel(context.Background())
	ok := false
	var notify notifier.Broadcaster = notifier.New()
	if cfg.Global.RedisURL != "" {
		// Typing is notified by each process as it applies the shared
		// typing log (split.go), so its notifications stay local.
		r, err := notifier.NewRedis(ctx, notifier.RedisOptions{URL: cfg.Global.RedisURL, Prefix: cfg.Global.RedisPrefix,
			LocalStreams: []string{clientapi.TypingStream}, Logger: logger})
		if err != nil {
			cancel()
			return nil, err
		}
		notify = r
	}
	// The federation API's wake-ups between processes go on a
	// broadcaster of their own: /sync wakes every waiter at a stream it
	// does not know.
	var fedWakes notifier.Broadcaster
	if cfg.Global.RedisURL != "" {
		r, err := notifier.NewRedis(ctx, notifier.RedisOptions{URL: cfg.Global.RedisURL,
			Prefix: cfg.Global.RedisPrefix + "federation:", Logger: logger})
		if err != nil {
			cancel()
			closeNotifier(notify)
			return nil, err
		}
		fedWakes = r
	}
	// Typing is kept in memory by each process; across processes every
	// change goes through a log on Redis that orders them all (typingLog,
	// built once the client API exists: no request or EDU reaches it
	// before assemble returns).
	var typingLog *notifier.Log
	var sharedTyping clientapi.TypingLog
	if cfg.Global.RedisURL != "" {
		sharedTyping = typingLogRef{&typingLog}
	}
	defer func() {
		if !ok {
			cancel()
			closeNotifier(notify)
			closeNotifier(fedWakes)
			if typingLog != nil {
				typingLog.Close()
			}
		}
	}()
	// runs says whether this process runs a component (global.components;
	// docs/split.md says which background work each one owns).
	runs := cfg.Global.Runs
	// The roomserver tells the notifier and the federation sender about
	// new events; the sender needs the roomserver, so it is built after it
	// and the hook reads it through a variable set before any event can be
	// written: nothing writes until the components' Start calls below,
	// made once every one is built (federationapi.New starts nothing).
	var federation *federationapi.Server
	// A new timeline event's unread counts are written in its own
	// transaction by the push component, built below (the same "set
	// before any write" holds).
	var push *pushserver.Server
	// A change of a room's guest_access queues the check of its guests
	// in its own transaction; the client API, built below, is woken
	// after the commit (the same "set before any write" holds; in split
	// mode the client API's process finds the queue at its poll).
	var client *clientapi.Server
	// With Redis, the background work that must run in one process at a
	// time (every component's but the sync API's and the push consumer's:
	// docs/split.md) runs under a lease per component (leases below), so
	// a second process running the same component waits as a standby.
	leased := cfg.Global.RedisURL != ""
	// A member event that leaves remote users sharing no room with a
	// local user stops tracking their device lists, in its own
	// transaction (devicelists.go); it reads the rooms through the
	// roomserver, set before any write like the components above.
	var untrack func(ctx context.Context, tx storage.Tx, ev roomserver.TimelineEvent) error
	// Joins ended by a state reset (no member event of theirs) likewise.
	var untrackEnded roomserver.JoinsEndedHook
	rooms, err := roomserver.New(ctx, roomserver.Deps{DB: db, ServerName: cfg.Global.ServerName, Key: key,
		Config: cfg.RoomServer, Shared: cfg.Global.RedisURL != "", Notify: func(stream string, pos int64) {
			notify.Notify(stream, pos)
			if federation != nil {
				federation.Notify(stream, pos)
			}
		}, OnTimeline: func(ctx context.Context, tx storage.Tx, ev roomserver.TimelineEvent) (func(), error) {
			if push == nil {
				return nil, errors.New("homeserver: room event written before the push component was built")
			}
			if untrack == nil {
				return nil, errors.New("homeserver: room event written before the roomserver was built")
			}
			if err := untrack(ctx, tx, ev); err != nil {
				return nil, err
			}
			return push.CountInTx(ctx, tx, ev)
		}, OnJoinsEnded: func(ctx context.Context, tx storage.Tx, roomID string, ended []string) error {
			if untrackEnded == nil {
				return errors.New("homeserver: room state changed before the roomserver was built")
			}
			return untrackEnded(ctx, tx, roomID, ended)
		}, StretchRefetchQueued: func() {
			if federation != nil {
				federation.WakeStretchRefetch()
			}
		}, OnGuestAccess: func(ctx context.Context, tx storage.Tx, roomID string, joinedLocal []string) error {
			queued, err := clientapi.QueueGuestLeaves(ctx, tx, roomID, joinedLocal)
			if err != nil {
				return err
			}
			if queued && client != nil {
				tx.AfterCommit(client.WakeQueuedLeaves)
			}
			return nil
		},
		// Forget refuses a room the user is invited to or knocking on
		// outside its events (a room only other servers hold).
		PendingMembership: federationapi.PendingMembershipInTx,
		// A member event of a local user in a room held here, or a
		// Forget, ends the pending membership in its own transaction.
		EndPendingMembership: func(ctx context.Context, tx storage.Tx, userID, roomID string) error {
			if federation == nil {
				return errors.New("homeserver: member event written before the federation API was built")
			}
			return federation.EndPendingMembershipInTx(ctx, tx, userID, roomID)
		}})
	if err != nil {
		return nil, fmt.Errorf("roomserver: %w", err)
	}
	untrack = untrackOnLeave(rooms, db.Engine(), cfg.Global.ServerName)
	untrackEnded = untrackOnJoinsEnded(rooms, db.Engine(), cfg.Global.ServerName)
	asRegistry, err := appservice.Load(cfg.AppService.ConfigFiles)
	if err != nil {
		return nil, fmt.Errorf("application services: %w", err)
	}
	var appServices *appservice.Server // set below; read only by handlers
	var keys *keyserver.Server         // set below; hooks read it only after assemble returns
	// The key counts of woken /sync responses come from memory, kept
	// exact by this process's key writes; in split mode another
	// process writes keys too, so they are read every time.
	var keyCounts *keyserver.CountMemo
	if cfg.Global.RedisURL == "" {
		keyCounts = keyserver.NewCountMemo()
	}
	var remote *remoteServers
	if cfg.Federation.Enabled {
		remote = &remoteServers{fed: &federation}
	}
	var syncServer *syncapi.Server // set below; hooks read it only after New returns
	drops := &slidingDrops{sync: &syncServer, log: logger}
	if cfg.Global.RedisURL != "" && !runs("syncapi") {
		if drops.redis, err = syncapi.NewRedisSlidingConns(cfg.Global.RedisURL, cfg.Global.RedisPrefix); err != nil {
			return nil, err
		}
		go func() {
			<-baseCtx.Done()
			drops.redis.Close()
		}()
	}
	client, err = clientapi.New(ctx, clientapi.Deps{NoBackground: !runs("clientapi") || leased, TypingLog: sharedTyping, Shared: cfg.Global.RedisURL != "", Config: cfg, DB: db, Key: key, Logger: logger, ClientIP: clientIP,
		Notify: notify.Notify, Wake: notify, Rooms: rooms, Federation: remote.clientAPI(),
		EndPendingMemberships: federationapi.EndPendingMembershipsInTx,
		AppServices:           asRegistry, AppServiceQueries: asQueries{&appServices},
		// Deleting a device deletes its keys and pushers in the same
		// transaction (and wakes the key server's device-list update
		// sender); its sliding sync connections are dropped once it
		// commits.
		OnDevicesDeleted: devicesDeleted(DevicesDeletedHook(db, keyCounts, func(stream string, pos int64) {
			notify.Notify(stream, pos)
			if keys != nil {
				keys.Notified(stream, pos)
			}
		}), drops.devicesDeleted),
		// A new device's key counts are read afresh, and sliding sync
		// connections of its ID dropped: another process (the `myelin
		// user` commands) may have deleted an earlier device of that ID,
		// and its keys, behind the key server's count memo and this
		// process's connections.
		OnDeviceCreated: func(ctx context.Context, tx storage.Tx, userID, deviceID string) error {
			if err := keyserver.DeviceCreatedHook(keyCounts)(ctx, tx, userID, deviceID); err != nil {
				return err
			}
			return drops.deviceCreated(ctx, tx, userID, deviceID)
		},
		// The dehydrated device (MSC3814) never logs in.
		SessionlessDevice: keyserver.IsDehydratedDevice,
		// Renaming a device is a device-list change, recorded with the rename.
		OnDeviceRenamed: keyserver.DeviceRenamedHook(db, func(stream string, pos int64) {
			notify.Notify(stream, pos)
			if keys != nil {
				keys.Notified(stream, pos)
			}
		})})
	if err != nil {
		return nil, fmt.Errorf("clientapi: %w", err)
	}
	if cfg.Global.RedisURL != "" {
		typingLog, err = notifier.NewLog(ctx, cfg.Global.RedisURL, cfg.Global.RedisPrefix+"typing:", typingLogKeep, logger, func(e notifier.LogEntry) {
			client.ApplyTypingEntry(e.Pos, e.Prev, e.At, e.Payload)
		})
		if err != nil {
			client.Close()
			return nil, err
		}
	}
	// The push consumer keeps the counts /sync waits for caught up, so it
	// runs where /sync does too; the gateway sender only with the push
	// server.
	push, err = pushserver.New(ctx, pushserver.Deps{NoSender: !runs("pushserver") || leased, NoConsumer: !runs("pushserver") && !runs("syncapi"), DB: db, ServerName: cfg.Global.ServerName, Config: cfg.Push,
		Rooms: rooms, Receipts: client, Threads: client, WriteAccountData: client.WriteServerAccountData, Notifier: notify,
		Verifier: client, Logger: logger, Shared: cfg.Global.RedisURL != ""})
	if err != nil {
		client.Close()
		return nil, fmt.Errorf("pushserver: %w", err)
	}
	e2ee := &syncE2EE{} // keys set below
	eph := &ephemeral{client: client, rooms: rooms, now: func() int64 { return time.Now().UnixMilli() }}
	var syncEph syncapi.Ephemeral = eph
	if typingLog != nil {
		syncEph = &sharedEphemeral{ephemeral: eph, log: typingLog}
	}
	if runs("syncapi") {
		syncServer, err = syncapi.New(baseCtx, syncapi.Deps{Rooms: rooms, AccountData: client, Filters: client,
			Ephemeral: syncEph, Invites: remote.syncAPI(), Push: syncPush{push: push}, Threads: client, Aggregations: client, Notifier: notify, Verifier: client, Logger: logger, E2EE: e2ee,
			RedisURL: cfg.Global.RedisURL, RedisPrefix: cfg.Global.RedisPrefix})
		if err != nil {
			push.Close()
			client.Close()
			return nil, fmt.Errorf("syncapi: %w", err)
		}
	}
	// Wakes the application service senders when a key count of one of
	// their users changes (/sync does not read that stream).
	asKeyCountWakes := notifier.New()
	keys, err = keyserver.New(ctx, keyserver.Deps{
		NoBackground:    !runs("keyserver") || leased,
		ServerName:      cfg.Global.ServerName,
		DB:              db,
		Verifier:        client,
		Logger:          logger,
		Notify:          notify.Notify,
		UserDevices:     client.Accounts().DeviceNames,
		RequirePassword: client.RequirePassword,
		SharedRoomUsers: sharedRoomUsers(rooms),
		SharedInTx: func(ctx context.Context, q storage.Querier, userIDs []string) ([]string, error) {
			return rooms.SharingLocalRoomInTx(ctx, q, userIDs, "")
		},
		MembershipDelta: keyChangesDelta(rooms),
		QueueEDU:        remote.keyServer(),
		Federation:      remote.remoteKeys(),
		SharedServers:   sharedServers(rooms),
		CountMemo:       keyCounts,
		Devices:         client.Accounts(),
		// MSC3202: key counts of the devices of services' users.
		WatchKeyCounts:  watchKeyCounts(asRegistry, cfg.Global.ServerName),
		KeyCountsNotify: func(pos int64) { asKeyCountWakes.Notify(keyserver.KeyCountStream, pos) },
	})
	if err != nil {
		push.Close()
		client.Close()
		return nil, fmt.Errorf("keyserver: %w", err)
	}
	e2ee.keys = keys
	federation, err = federationapi.New(ctx, federationapi.Deps{
		Config:     cfg.Federation,
		ServerName: cfg.Global.ServerName,
		Key:        key,
		DB:         db,
		Rooms:      rooms,
		TLSConfig:  fedClient.Transport.(*http.Transport).TLSClientConfig,
		Profiles:   client,
		Aliases:    client,
		Directory:  client,
		Notify:     notify.Notify,
		Wakes:      fedWakes,
		// MSC4155: a local user's invite filter may refuse remote invites.
		CheckInvite: client.CheckInvite,
		EDUs: federationapi.EDUSinks{Typing: client, Receipts: client, Presence: client,
			ToDevice: keys, DeviceLists: keys},
		UserKeys: keys,
		Spaces:   client,
		OpenID:   client,
		Logger:   logger,
	})
	if err != nil {
		push.Close()
		client.Close()
		return nil, fmt.Errorf("federationapi: %w", err)
	}
	// Remote media is fetched with federationapi's signing and discovery.
	media, err := mediaapi.New(ctx, mediaapi.Deps{NoBackground: !runs("mediaapi") || leased, Config: cfg, DB: db, Logger: logger, Verifier: client, FederationClient: fedClient, ClientIP: clientIP,
		SignFederationRequest: federation.SignRequest, Resolve: federation.ResolveBaseURL})
	if err != nil {
		push.Close()
		client.Close()
		return nil, fmt.Errorf("mediaapi: %w", err)
	}

	appServices, err = appservice.New(ctx, appservice.Deps{NoSenders: !runs("appservice") || leased, DB: db, ServerName: cfg.Global.ServerName, Registry: asRegistry,
		Rooms: rooms, Notifier: notify, Logger: logger, RoomAliases: client.RoomAliases,
		Ephemeral: asEphemeral{client: client, now: func() int64 { return time.Now().UnixMilli() }},
		ToDevice:  asToDevice{keys: keys},
		Keys:      asKeys{keys: keys}, KeyCountWakes: asKeyCountWakes,
		MinBackoff: cfg.AppService.MinBackoff.D(), MaxBackoff: cfg.AppService.MaxBackoff.D()})
	if err != nil {
		media.Close()
		push.Close()
		client.Close()
		return nil, fmt.Errorf("appservice: %w", err)
	}

	// Requests are observed only when /metrics is served: with metrics off
	// (the default) the middleware would keep series nobody reads.
	metrics := httpx.NewMetrics()
	observe := func(next http.Handler) http.Handler { return next }
	if cfg.Metrics.Enabled {
		observe = metrics.Middleware
	}

	activity := &httpx.Activity{}
	r := chi.NewRouter()
	r.Use(activity.Middleware, httpx.RequestLog(logger), httpx.Recover, httpx.CORS, bodyLimitExcept(cfg.HTTP.MaxBodyBytes, mediaapi.IsUpload), observe, httpx.LegacyClientPrefix)
	r.NotFound(httpx.NotFound)
	r.MethodNotAllowed(httpx.MethodNotAllowed)
	if cfg.Metrics.Enabled {
		r.Method(http.MethodGet, "/metrics", metrics)
	}
	// Each process mounts only its components' routes: the others answer
	// 404 M_UNRECOGNIZED like any unknown path, and a reverse proxy routes
	// each path to a process that serves it (docs/split.md).
	if runs("clientapi") {
		client.Routes(r)
	}
	if runs("syncapi") {
		syncServer.Routes(r)
	}
	if runs("keyserver") {
		keys.Routes(r)
	}
	if runs("federationapi") {
		federation.Routes(r)
	}
	if runs("mediaapi") {
		media.Routes(r)
		// The federation media endpoints read the media store: they
		// are the media API's, under the federation prefix.
		if cfg.Federation.Enabled {
			media.FederationRoutes(r, federation.AuthenticateOrigin)
		}
	}
	if runs("pushserver") {
		push.Routes(r)
	}
	if runs("appservice") {
		appServices.Routes(r)
	}

	if cfg.Federation.Enabled {
		keys.StartFederation(baseCtx)
		rooms.SetBackfiller(federation)
		rooms.SetPolicySigner(federation)
	}
	// Every component is built: room events may be written, and the
	// background work that writes them (the client API's queues, the
	// federation API's retries and resyncs) may start.
	client.Start()
	if runs("federationapi") {
		if leased {
			// The sender and the rest run under the lease (below).
			federation.StartWakes()
		} else {
			federation.Start()
		}
		// The sender fans out the room events of every process: in a
		// split deployment (or several processes running every
		// component) the others' are heard through the notifier.
		if cfg.Global.RedisURL != "" && cfg.Federation.Enabled {
			go wakeSenderOnRoomEvents(baseCtx, notify, federation)
		}
	} else {
		federation.StartWakes()
	}
	if runs("keyserver") && !leased {
		go flushOutbound(baseCtx, keys, logger)
	}

	var leases *leaseRunner
	if leased {
		var singletons []singleton
		if runs("appservice") {
			if err := appServices.InitPositions(ctx); err != nil {
				appServices.Close()
				media.Close()
				push.Close()
				client.Close()
				return nil, fmt.Errorf("appservice: %w", err)
			}
			singletons = append(singletons, singleton{"appservice", appServices.RunSenders})
		}
		if runs("pushserver") {
			singletons = append(singletons, singleton{"pushserver", push.RunSender})
		}
		if runs("mediaapi") {
			singletons = append(singletons, singleton{"mediaapi", media.RunBackground})
		}
		if runs("federationapi") && cfg.Federation.Enabled {
			singletons = append(singletons, singleton{"federationapi", federation.RunSingletons})
		}
		if runs("clientapi") {
			singletons = append(singletons, singleton{"clientapi", client.RunBackground})
		}
		if runs("keyserver") {
			singletons = append(singletons, singleton{"keyserver", func(ctx context.Context) {
				flushOutbound(ctx, keys, logger)
				keys.RunDeviceListSender(ctx)
				<-ctx.Done()
			}})
		}
		if leases, err = startLeases(baseCtx, cfg, logger, singletons); err != nil {
			appServices.Close()
			media.Close()
			push.Close()
			client.Close()
			return nil, err
		}
	}

	ok = true
	return &Homeserver{
		Config:           cfg,
		DB:               db,
		Key:              key,
		ClientAPI:        client,
		Rooms:            rooms,
		Sync:             syncServer,
		Notifier:         notify,
		KeyServer:        keys,
		Federation:       federation,
		Media:            media,
		Push:             push,
		AppServices:      appServices,
		FederationClient: fedClient,
		Activity:         activity,
		Log:              logger,
		handler:          r,
		baseCtx:          baseCtx,
		cancelBase:       cancel,
		fedWakes:         fedWakes,
		typingLog:        typingLog,
		leases:           leases,
	}, nil
}

// Handler is the HTTP handler serving every endpoint.
func (hs *Homeserver) Handler() http.Handler { return hs.handler }

// Serve answers plain HTTP requests on ln until ctx ends, then shuts down
// gracefully: it stops accepting, ends long-polls, and waits up to the
// configured shutdown timeout for in-flight requests.
func (hs *Homeserver) Serve(ctx context.Context, ln net.Listener) error {
	return hs.serve(ctx, ln, nil)
}

// ServeFederation is Serve over TLS with the federation certificate, for
// the federation_api.listen address. It serves the same handler (other
// servers need the key and federation endpoints; clients may use it too)
// and shuts down the same way. It fails if no federation listener is
// configured.
func (hs *Homeserver) ServeFederation(ctx context.Context, ln net.Listener) error {
	if hs.federationTLS == nil {
		return errors.New("no federation listener configured (set federation_api.listen, tls_cert and tls_key)")
	}
	return hs.serve(ctx, ln, hs.federationTLS)
}

func (hs *Homeserver) serve(ctx context.Context, ln net.Listener, tlsConfig *tls.Config) error {
	srv := &http.Server{
		Handler:           hs.handler,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       120 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return hs.baseCtx },
		ErrorLog:          slog.NewLogLogger(hs.Log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	if tlsConfig != nil {
		// ServeTLS (unlike Serve on a TLS listener) also offers HTTP/2.
		srv.TLSConfig = tlsConfig.Clone()
		go func() { errc <- srv.ServeTLS(ln, "", "") }()
	} else {
		go func() { errc <- srv.Serve(ln) }()
	}
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	timeout := hs.Config.HTTP.ShutdownTimeout.D()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// Shutdown first stops new connections; then ending the base context
	// wakes long-polling requests so they answer and finish.
	done := make(chan error, 1)
	go func() { done <- srv.Shutdown(shutdownCtx) }()
	hs.cancelBase()
	err := <-done
	if errors.Is(err, context.DeadlineExceeded) {
		hs.Log.Warn("shutdown timeout reached; closing remaining connections", "timeout", timeout)
		srv.Close()
	}
	if serveErr := <-errc; serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return serveErr
	}
	return nil
}

// Close stops the components' background work and releases the
// database. Call it after Serve returns.
func (hs *Homeserver) Close() error {
	hs.cancelBase()
	// The singletons stop (and give their leases back) before the
	// components they use close.
	leaseErr := hs.leases.close()
	var relayErr error
	if hs.typingLog != nil {
		relayErr = hs.typingLog.Close()
	}
	return errors.Join(leaseErr, relayErr, hs.AppServices.Close(), hs.Federation.Close(), hs.Media.Close(), hs.Push.Close(), hs.ClientAPI.Close(), closeNotifier(hs.Notifier),
		closeNotifier(hs.fedWakes), hs.DB.Close())
}

// flushOutbound queues the to-device messages for other servers that a
// crash left unqueued.
func flushOutbound(ctx context.Context, keys *keyserver.Server, logger *slog.Logger) {
	if err := keys.FlushOutbound(ctx); err != nil && ctx.Err() == nil {
		logger.Warn("queueing leftover to-device messages", "err", err)
	}
}

// closeNotifier stops a notifier that has background work (Redis).
func closeNotifier(n notifier.Broadcaster) error {
	if c, ok := n.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// sharedRoomUsers lists the users who share a joined room with a user, for
// the key server's device-list fan-out. It reads each room's joined user IDs
// (one indexed query) rather than the room's member events: every /sync
// that reports device-list changes calls it, and loading, checking and
// converting each room's whole current state to get the IDs made it the
// largest share of the heap in flight while 200 listeners were woken
// (docs/benchmarks.md, "Memory at idle and peak"). The rooms are the user's
// joined rooms, whose current state the user may read anyway.
func sharedRoomUsers(rooms *roomserver.Server) func(ctx context.Context, userID string) ([]string, error) {
	return func(ctx context.Context, userID string) ([]string, error) {
		joined, err := rooms.JoinedRooms(ctx, userID)
		if err != nil {
			return nil, err
		}
		seen := map[string]bool{}
		var users []string
		for _, roomID := range joined {
			members, err := rooms.JoinedUsers(ctx, roomID)
			if err != nil {
				return nil, err
			}
			for _, m := range members {
				if !seen[m] {
					seen[m] = true
					users = append(users, m)
				}
			}
		}
		return users, nil
	}
}

// bodyLimitExcept is httpx.BodyLimit(max) for every request except those
// skip reports, such as media uploads, whose handlers apply their own
// (larger) limit while streaming.
func bodyLimitExcept(max int64, skip func(*http.Request) bool) func(http.Handler) http.Handler {
	limit := httpx.BodyLimit(max)
	return func(next http.Handler) http.Handler {
		limited := limit(next)
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if skip(r) {
				next.ServeHTTP(w, r)
				return
			}
			limited.ServeHTTP(w, r)
		})
	}
}

// DevicesDeletedHook is what runs inside every transaction that deletes a
// user's devices, in the server (clientapi.Deps.OnDevicesDeleted) and in
// the admin commands (cmd/myelin, clientapi.Accounts.SetDevicesDeletedHook):
// the key server deletes the devices' keys, one-time and fallback keys,
// signatures and to-device inbox and records a device-list change; the
// push server deletes their pushers. counts is the key server's
// CountMemo (nil when there is none); notify is told of the device-list
// position after commit (nil: no one, as in the admin commands). The key
// and push servers' tables must exist: MigrateDevicesDeletedTables.
func DevicesDeletedHook(db *storage.DB, counts *keyserver.CountMemo, notify func(stream string, pos int64)) clientapi.DevicesDeletedHook {
	return devicesDeleted(keyserver.DevicesDeletedHook(db, counts, notify), pushserver.DeletePushersForDevices)
}

// MigrateDevicesDeletedTables applies the migrations of the components
// whose tables DevicesDeletedHook writes, for a process that runs the
// hook without building them (the admin commands, which may run before
// any server has).
func MigrateDevicesDeletedTables(ctx context.Context, db *storage.DB) error {
	if err := keyserver.Migrate(ctx, db); err != nil {
		return err
	}
	return pushserver.Migrate(ctx, db)
}

// devicesDeleted runs each hook in the transaction that deletes devices.
func devicesDeleted(hooks ...clientapi.DevicesDeletedHook) clientapi.DevicesDeletedHook {
	return func(ctx context.Context, tx storage.Tx, userID string, deviceIDs []string) error {
		for _, h := range hooks {
			if err := h(ctx, tx, userID, deviceIDs); err != nil {
				return err
			}
		}
		return nil
	}
}

// asQueries gives the client API the application service queries through
// a pointer set once the appservice component exists (handlers only run
// after assemble returns).
type asQueries struct{ s **appservice.Server }

func (q asQueries) QueryUser(ctx context.Context, userID string) bool {
	return *q.s != nil && (*q.s).QueryUser(ctx, userID)
}

func (q asQueries) QueryAlias(ctx context.Context, alias string) bool {
	return *q.s != nil && (*q.s).QueryAlias(ctx, alias)
}

func (q asQueries) Protocols(ctx context.Context) map[string]map[string]any {
	if *q.s == nil {
		return map[string]map[string]any{}
	}
	return (*q.s).Protocols(ctx)
}

func (q asQueries) Protocol(ctx context.Context, protocol string) (map[string]any, bool) {
	if *q.s == nil {
		return nil, false
	}
	return (*q.s).Protocol(ctx, protocol)
}

func (q asQueries) ThirdPartyLookup(ctx context.Context, kind appservice.ThirdPartyKind, protocol string, fields url.Values) ([]map[string]any, bool) {
	if *q.s == nil {
		return []map[string]any{}, false
	}
	return (*q.s).ThirdPartyLookup(ctx, kind, protocol, fields)
}
