package clientapi

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/internal/ratelimit"
)

// Delayed events (MSC4140): PUT /send and /state with
// ?org.matrix.msc4140.delay=<ms> schedule the event instead of sending it
// and answer with a delay_id. The server sends it when the delay runs
// out; until then anyone holding the delay_id may cancel it, restart
// its delay or send it at once (the delay_id is the credential, so that
// a client that lost its session can still act on it). Scheduled events
// are rows in delayed_events, so they survive a restart, and the
// scheduler (delayed_events_store.go) sends them from any process.

const (
	// delayParam is MSC4140's unstable query parameter.
	delayParam = "org.matrix.msc4140.delay"
	// delayedEventsPath is the unstable prefix of the management API.
	delayedEventsPath = "/_matrix/client/unstable/org.matrix.msc4140/delayed_events"
	// delayIDPrefix starts every delay ID.
	delayIDPrefix = "myd_"
)

// delayedEvents is the state of the delayed events module inside Server.
type delayedEvents struct {
	// wake tells the scheduler that the earliest due time may have moved.
	wake chan struct{}
	// actionLimit limits unauthenticated management requests per client
	// IP: the delay ID is a secret, and this keeps guessing slow.
	actionLimit *ratelimit.Limiter
}

// delayedEventPublicRoutes registers the management endpoints, which
// take no access token. MSC4140: POST .../{delay_id}/{action}, and the
// older form with {"action": ...} in the body.
func (s *Server) delayedEventPublicRoutes(r chi.Router) {
	handle(r, http.MethodPost, delayedEventsPath+"/{delayId}", s.updateDelayedEvent)
	handle(r, http.MethodPost, delayedEventsPath+"/{delayId}/{action}", s.updateDelayedEvent)
}

// delayedEventRoutes registers the listing, which needs an access token.
func (s *Server) delayedEventRoutes(r chi.Router) {
	handle(r, http.MethodGet, delayedEventsPath, s.listDelayedEvents)
}

// delayRequested reports whether a send or state request asks for a
// delay, and parses it: a non-negative integer of milliseconds, at most
// client_api.delayed_events.max_delay.
func (s *Server) delayRequested(r *http.Request) (delay time.Duration, delayed bool, err error) {
	q := r.URL.Query()
	if !q.Has(delayParam) {
		return 0, false, nil
	}
	max := s.cfg.ClientAPI.DelayedEvents.MaxDelay.D()
	if max == 0 {
		return 0, true, mxerr.New(mxerr.Unrecognized, "delayed events are not enabled on this server").WithStatus(http.StatusBadRequest)
	}
	ms, err := strconv.ParseInt(q.Get(delayParam), 10, 64)
	if err != nil || ms < 0 {
		return 0, true, mxerr.New(mxerr.InvalidParam, "%s must be a non-negative integer of milliseconds", delayParam)
	}
	if ms > max.Milliseconds() {
		return 0, true, mxerr.New(mxerr.InvalidParam, "the delay exceeds the maximum of %d ms", max.Milliseconds()).
			With("org.matrix.msc4140.errcode", "M_MAX_DELAY_EXCEEDED").
			With("org.matrix.msc4140.max_delay", max.Milliseconds())
	}
	return time.Duration(ms) * time.Millisecond, true, nil
}

// scheduleDelayed answers a send (txnID non-empty) or state request that
// asked for a delay. A retried send with the same transaction ID answers
// with the first delay ID before the body is read, as a retried send
// answers with the first event.
func (s *Server) scheduleDelayed(w http.ResponseWriter, r *http.Request, d delayedEvent, txnID string) error {
	ctx := r.Context()
	me := caller(r)
	if me.IsGuest {
		return mxerr.New(mxerr.GuestAccessForbidden, "guests cannot schedule delayed events")
	}
	if txnID != "" {
		if id, err := s.delayedTxn(ctx, me.UserID, me.DeviceID, txnID); err != nil || id != "" {
			if err != nil {
				return err
			}
			return httpx.OK(w, map[string]string{"delay_id": id})
		}
	}
	content, err := eventContent(r)
	if err != nil {
		return err
	}
	// Scheduling counts against the sender's message rate, like a send.
	if err := s.allowMessage(me); err != nil {
		return err
	}
	if err := s.requireJoined(ctx, d.RoomID, me.UserID); err != nil {
		return err
	}
	d.UserID, d.Content = me.UserID, content
	id, err := s.insertDelayedEvent(ctx, d, me.DeviceID, txnID, time.Now())
	if err != nil {
		return err
	}
	s.wakeDelayedEvents()
	return httpx.OK(w, map[string]string{"delay_id": id})
}

// listDelayedEvents lists the caller's scheduled events.
// MSC4140: GET /delayed_events.
func (s *Server) listDelayedEvents(w http.ResponseWriter, r *http.Request) error {
	events, err := s.delayedEventsOf(r.Context(), caller(r).UserID)
	if err != nil {
		return err
	}
	out := make([]map[string]any, 0, len(events))
	for _, e := range events {
		entry := map[string]any{"delay_id": e.DelayID, "room_id": e.RoomID, "type": e.Type,
			"delay": e.Delay.Milliseconds(), "running_since": e.RunningSince.UnixMilli(), "content": e.Content}
		if e.StateKey != nil {
			entry["state_key"] = *e.StateKey
		}
		out = append(out, entry)
	}
	return httpx.OK(w, map[string]any{"delayed_events": out})
}

// updateDelayedEvent cancels, restarts or sends a scheduled event.
// MSC4140: POST /delayed_events/{delay_id}/{action} (or the action in
// the body). An unknown action is 404 M_UNRECOGNIZED (no such endpoint);
// an unknown delay ID is 404 M_NOT_FOUND.
func (s *Server) updateDelayedEvent(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	if err := s.delayed.actionLimit.Allow(s.clientIP.ClientIP(r)); err != nil {
		return err
	}
	action := chi.URLParam(r, "action")
	if action == "" {
		var body struct {
			Action *string `json:"action"`
		}
		if err := httpx.DecodeJSON(r, &body); err != nil {
			return err
		}
		if body.Action == nil {
			return mxerr.New(mxerr.MissingParam, "action is required")
		}
		action = *body.Action
	}
	delayID, err := unescapedParam(r, "delayId")
	if err != nil {
		return err
	}
	switch action {
	case "cancel":
		err = s.cancelDelayedEvent(ctx, delayID)
	case "restart":
		err = s.restartDelayedEvent(ctx, delayID, time.Now())
		s.wakeDelayedEvents()
	case "send":
		err = s.sendDelayedEventNow(ctx, delayID)
	default:
		if chi.URLParam(r, "action") != "" {
			return mxerr.New(mxerr.Unrecognized, "unknown delayed event action %q", action)
		}
		return mxerr.New(mxerr.InvalidParam, "action must be cancel, restart or send")
	}
	if err != nil {
		return err
	}
	return httpx.OK(w, httpx.EmptyObject)
}

// wakeDelayedEvents tells the scheduler to look at the due times again.
func (s *Server) wakeDelayedEvents() {
	select {
	case s.delayed.wake <- struct{}{}:
	default:
	}
}

// delayedEvent is one scheduled event.
type delayedEvent struct {
	DelayID      string
	UserID       string
	RoomID       string
	Type         string
	StateKey     *string // nil for a message event
	Content      json.RawMessage
	Delay        time.Duration
	RunningSince time.Time
}

// initDelayedEvents prepares the module; the scheduler starts in
// startDelayedEvents.
func (s *Server) initDelayedEvents() {
	s.delayed = delayedEvents{
		wake:        make(chan struct{}, 1),
		actionLimit: s.newLimiter("delayed_action", s.cfg.ClientAPI.RateLimits.Login.PerSecond*4, s.cfg.ClientAPI.RateLimits.Login.Burst*4),
	}
}

// startDelayedEvents runs the scheduler until ctx ends; wg counts it.
func (s *Server) startDelayedEvents(ctx context.Context, wg *sync.WaitGroup) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.runDelayedEvents(ctx)
	}()
}
