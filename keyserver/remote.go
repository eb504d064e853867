package keyserver

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// Keys of users on other servers. Spec: server-server-api, "Device
// Management" and "End-to-End Encryption"; client-server-api, "POST
// /_matrix/client/v3/keys/query" (timeout, failures).
//
// The cache: for a remote user who shares a room with a local user, the
// key server keeps the devices and cross-signing keys their server
// served through GET /user/devices, with the stream ID that answer
// carried. An m.device_list_update whose prev_id names the stream ID we
// hold is applied to the cache; any other (an unknown prev_id, a
// signing-key update, an update without keys) marks the cache stale and
// starts a resync. /keys/query answers from the cache only while it is
// not stale and the user still shares a room with a local user; else it
// asks the user's server (POST /user/keys/query) and starts tracking.

// RemoteKeys reaches other servers' key endpoints (federationapi.Server).
// Each returns the answer's JSON body, or an error for an unreachable
// server or a non-2xx answer.
type RemoteKeys interface {
	QueryRemoteKeys(ctx context.Context, server string, deviceKeys map[string][]string) (json.RawMessage, error)
	ClaimRemoteKeys(ctx context.Context, server string, oneTimeKeys map[string]map[string]string) (json.RawMessage, error)
	RemoteUserDevices(ctx context.Context, server, userID string) (json.RawMessage, error)
}

// defaultRemoteTimeout is the spec's recommended wait for remote
// servers when the client gives no timeout; maxRemoteTimeout caps it.
const (
	defaultRemoteTimeout = 10 * time.Second
	maxRemoteTimeout     = time.Minute
	resyncTimeout        = 30 * time.Second
)

func requestTimeout(ms *int64) time.Duration {
	if ms == nil || *ms <= 0 {
		return defaultRemoteTimeout
	}
	return min(time.Duration(*ms)*time.Millisecond, maxRemoteTimeout)
}

// remoteFailure is the failures entry for a server that could not
// answer.
func remoteFailure(ctx context.Context, err error) map[string]any {
	if errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
		return map[string]any{"status": http.StatusGatewayTimeout, "message": "the server did not answer in time"}
	}
	return map[string]any{"status": http.StatusServiceUnavailable, "message": err.Error()}
}

// fanOut runs fn for each server in parallel, bounded by timeout, and
// returns the failures.
func fanOut[T any](ctx context.Context, timeout time.Duration, byServer map[string]T, fn func(ctx context.Context, server string, req T) error) map[string]any {
	failures := map[string]any{}
	if len(byServer) == 0 {
		return failures
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for server, req := range byServer {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(ctx, server, req); err != nil {
				mu.Lock()
				failures[server] = remoteFailure(ctx, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return failures
}

// queryRemote adds remote users' keys to out: from the cache when fresh,
// else from their servers.
func (s *Server) queryRemote(ctx context.Context, remote map[string]map[string][]string, timeout time.Duration, out *keysResult) error {
	fromCache := func() error {
		for server, users := range remote {
			for userID, wanted := range users {
				ok, err := s.cachedKeys(ctx, userID, wanted, out)
				if err != nil {
					return err
				}
				if ok {
					delete(users, userID)
				}
			}
			if len(users) == 0 {
				delete(remote, server)
			}
		}
		return nil
	}
	if err := fromCache(); err != nil {
		return err
	}
	// Tracked users without a fresh cache: resync them now, then answer
	// from the cache; the others are asked through /user/keys/query.
	var uncached []string
	for _, users := range remote {
		for userID := range users {
			uncached = append(uncached, userID)
		}
	}
	// One deadline for the resyncs and the queries after them.
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	filled, err := s.resyncTracked(ctx, uncached)
	if err != nil {
		return err
	}
	if len(filled) > 0 {
		if err := fromCache(); err != nil {
			return err
		}
	}
	if s.fed == nil {
		for server := range remote {
			out.Failures[server] = map[string]any{"status": http.StatusServiceUnavailable, "message": "federation is disabled"}
		}
		return nil
	}
	var mu sync.Mutex
	failures := fanOut(ctx, timeout, remote, func(ctx context.Context, server string, users map[string][]string) error {
		raw, err := s.fed.QueryRemoteKeys(ctx, server, users)
		if err != nil {
			return err
		}
		var resp struct {
			DeviceKeys      map[string]map[string]json.RawMessage `json:"device_keys"`
			MasterKeys      map[string]json.RawMessage            `json:"master_keys"`
			SelfSigningKeys map[string]json.RawMessage            `json:"self_signing_keys"`
		}
		if err := json.Unmarshal(raw, &resp); err != nil {
			return fmt.Errorf("bad /user/keys/query answer from %s: %w", server, err)
		}
		mu.Lock()
		defer mu.Unlock()
		// Only what was asked for, and only keys that say they belong
		// to the user (and device) they are filed under.
		for userID := range users {
			devices := map[string]json.RawMessage{}
			for deviceID, k := range resp.DeviceKeys[userID] {
				if keyOwnerIs(k, userID, deviceID) {
					devices[deviceID] = k
				}
			}
			out.DeviceKeys[userID] = devices
			if k := resp.MasterKeys[userID]; keyOwnerIs(k, userID, "") {
				out.MasterKeys[userID] = k
			}
			if k := resp.SelfSigningKeys[userID]; keyOwnerIs(k, userID, "") {
				out.SelfSigningKeys[userID] = k
			}
		}
		return nil
	})
	for server, f := range failures {
		out.Failures[server] = f
	}
	for _, users := range remote {
		for userID := range users {
			s.startTracking(userID)
		}
	}
	return nil
}

// keyOwnerIs reports whether a key object names userID (and deviceID,
// if not "") as its owner.
func keyOwnerIs(raw json.RawMessage, userID, deviceID string) bool {
	var k struct {
		UserID   string `json:"user_id"`
		DeviceID string `json:"device_id"`
	}
	if len(raw) == 0 || json.Unmarshal(raw, &k) != nil {
		return false
	}
	return k.UserID == userID && (deviceID == "" || k.DeviceID == deviceID)
}

// claimRemote claims remote users' keys from their servers into result
// and returns the failures.
func (s *Server) claimRemote(ctx context.Context, remote map[string]map[string]map[string]string, timeout time.Duration,
	result map[string]map[string]map[string]json.RawMessage) map[string]any {
	if s.fed == nil {
		failures := map[string]any{}
		for server := range remote {
			failures[server] = map[string]any{"status": http.StatusServiceUnavailable, "message": "federation is disabled"}
		}
		return failures
	}
	var mu sync.Mutex
	return fanOut(ctx, timeout, remote, func(ctx context.Context, server string, users map[string]map[string]string) error {
		raw, err := s.fed.ClaimRemoteKeys(ctx, server, users)
		if err != nil {
			return err
		}
		var resp struct {
			OneTimeKeys map[string]map[string]map[string]json.RawMessage `json:"one_time_keys"`
		}
		if err := json.Unmarshal(raw, &resp); err != nil {
			return fmt.Errorf("bad /user/keys/claim answer from %s: %w", server, err)
		}
		mu.Lock()
		defer mu.Unlock()
		for userID, devices := range users {
			for deviceID := range devices {
				if keys := resp.OneTimeKeys[userID][deviceID]; len(keys) > 0 {
					if result[userID] == nil {
						result[userID] = map[string]map[string]json.RawMessage{}
					}
					result[userID][deviceID] = keys
				}
			}
		}
		return nil
	})
}

// tracked reports whether userID shares a joined room with a local user.
func (s *Server) tracked(ctx context.Context, userID string) (bool, error) {
	if s.sharedRoomUsers == nil {
		return false, nil
	}
	users, err := s.sharedRoomUsers(ctx, userID)
	if err != nil {
		return false, err
	}
	return slices.ContainsFunc(users, s.isLocal), nil
}

// cachedKeys adds userID's cached keys to out if the cache is fresh.
func (s *Server) cachedKeys(ctx context.Context, userID string, wanted []string, out *keysResult) (bool, error) {
	var stale bool
	err := s.db.Reader().QueryRow(ctx, `SELECT stale FROM keyserver_remote_users WHERE user_id = $1`, userID).Scan(&stale)
	if storage.IsNoRows(err) || (err == nil && stale) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if ok, err := s.tracked(ctx, userID); err != nil || !ok {
		return false, err
	}
	devices := map[string]json.RawMessage{}
	rows, err := s.db.Reader().Query(ctx, `SELECT device_id, key_json FROM keyserver_remote_device_keys WHERE user_id = $1`, userID)
	if err != nil {
		return false, err
	}
	for rows.Next() {
		var deviceID, keyJSON string
		if err := rows.Scan(&deviceID, &keyJSON); err != nil {
			rows.Close()
			return false, err
		}
		if len(wanted) == 0 || slices.Contains(wanted, deviceID) {
			devices[deviceID] = json.RawMessage(keyJSON)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return false, err
	}
	rows, err = s.db.Reader().Query(ctx, `SELECT key_type, key_json FROM keyserver_remote_cross_signing_keys WHERE user_id = $1`, userID)
	if err != nil {
		return false, err
	}
	defer rows.Close()
	for rows.Next() {
		var keyType, keyJSON string
		if err := rows.Scan(&keyType, &keyJSON); err != nil {
			return false, err
		}
		switch keyType {
		case keyTypeMaster:
			out.MasterKeys[userID] = json.RawMessage(keyJSON)
		case keyTypeSelfSigning:
			out.SelfSigningKeys[userID] = json.RawMessage(keyJSON)
		}
	}
	out.DeviceKeys[userID] = devices
	return true, rows.Err()
}

// startTracking resyncs userID's keys in the background if they share a
// room with a local user and the cache is missing or stale, until the
// cache is fresh: a resync that fails, or whose answer may predate an
// update that came while it was on its way (the cache is left stale), is
// tried again after a backoff (resyncRetry). Otherwise nothing would
// fetch the list before the next /keys/query for the user, and a cache
// that a failed fetch left empty would stay so (federationapi
// TestDehydratedDeviceAcrossServers on a loaded machine). Spec:
// server-server-api, "Device Management" (a server whose copy of a
// user's list is out of date resyncs it); client-server-api, "Tracking
// the device list for a user".
//
// At most one such loop per user runs; a call while it runs only tells
// it to read the cache's state once more before it ends. It fetches
// nothing when the cache is fresh, and waits for a resync already
// running rather than starting a second (resyncShared), so a resync that
// ends with the cache fresh costs one GET /user/devices. The loops of
// one server's users share its backoff (serverBackoff) and skip retries
// while the federation sender backs off from it (backingOff), so a
// server that is down is not asked once per tracked user per step. A
// loop that ends (fresh, out of attempts, or refused) starts a new round
// if an update came during its last attempt. The loops end with the
// context StartFederation was given. The retry state is not
// stored: the stale marker is (keyserver_remote_users.stale), and a
// stale cache is never served — after a restart /keys/query resyncs it.
func (s *Server) startTracking(userID string) {
	bg := s.background()
	if bg == nil || s.fed == nil || s.isLocal(userID) {
		return
	}
	s.resyncMu.Lock()
	if _, running := s.tracking[userID]; running {
		s.tracking[userID] = true
		s.resyncMu.Unlock()
		return
	}
	s.tracking[userID] = false
	retry := s.retry
	s.resyncMu.Unlock()
	go s.track(bg, userID, retry)
}

// resyncRetry is how often, and when, startTracking's loop tries again:
// first after first, then after twice the previous wait up to max, for
// at most attempts resyncs in all. Each wait is jittered (jitter), so
// that loops started together do not retry together.
type resyncRetry struct {
	first, max time.Duration
	attempts   int
}

var defaultResyncRetry = resyncRetry{first: time.Second, max: 30 * time.Second, attempts: 8}

// jitter returns a duration drawn evenly from [d/2, d].
func jitter(d time.Duration) time.Duration {
	if d <= 1 {
		return d
	}
	return d/2 + rand.N(d/2+1)
}

// serverBackoff is a server whose GET /user/devices failed (retryable).
// It is kept here, besides the federation sender's backoff (which the
// loops also heed: backingOff), because the sender records only its own
// transactions' failures, and a server may be down while we have
// nothing to send it:
// the background resync loops of its users send it nothing until until,
// then one of them asks (the probe) while the others wait for its
// outcome. So while the server is down its N tracked users cost one
// request per backoff step, not N; the step doubles from retry.first to
// retry.max at each failed probe. The server's first answer (any status
// retryable does not take for a failure, or a 2xx) ends it.
type serverBackoff struct {
	until    time.Time
	wait     time.Duration
	failures int           // failed fetches recorded, probes or not
	probe    chan struct{} // non-nil while a probe runs; closed when it ends
}

// errBackingOff is the failed attempt of a retry skipped because the
// federation sender is backing off from the user's server
// (DestinationBackingOff).
var errBackingOff = errors.New("the federation sender is backing off from the user's server")

// backingOff reports whether the federation client says it is backing
// off from server (the sender's failed transactions), when it can tell.
func (s *Server) backingOff(ctx context.Context, server string) bool {
	b, ok := s.fed.(interface {
		DestinationBackingOff(ctx context.Context, server string) bool
	})
	return ok && b.DestinationBackingOff(ctx, server)
}

// errServerFailing is the failed attempt of a loop that waited for
// another loop's probe of the user's server, which failed.
var errServerFailing = errors.New("the user's server is failing (another resync's probe failed)")

// noteServer records the outcome of a GET /user/devices to server:
// err nil or not retryable (the server answered) ends its backoff; a
// retryable failure starts one, or, when it is a probe's, doubles it.
func (s *Server) noteServer(server string, err error) {
	s.resyncMu.Lock()
	defer s.resyncMu.Unlock()
	b := s.failing[server]
	if err == nil || !retryable(err) {
		delete(s.failing, server)
		return
	}
	retry := s.retry
	switch {
	case b == nil:
		// Forget the servers whose backoff ran out long ago and that no
		// one asked since (their users' loops have ended): a later
		// failure starts over from retry.first.
		for name, old := range s.failing {
			if old.probe == nil && time.Since(old.until) > retry.max {
				delete(s.failing, name)
			}
		}
		b = &serverBackoff{wait: retry.first}
		s.failing[server] = b
	case b.probe != nil:
		b.wait = min(b.wait*2, retry.max)
	}
	b.failures++
	b.until = time.Now().Add(jitter(b.wait))
}

// awaitServer waits, before a background resync of a user of server,
// while server is in backoff (serverBackoff). It returns end, to call
// once the resync is over, when the caller may fetch; or
// errServerFailing when another loop's probe failed while it waited; or
// bg's error.
func (s *Server) awaitServer(bg context.Context, server string) (end func(), err error) {
	for {
		s.resyncMu.Lock()
		b := s.failing[server]
		if b == nil {
			s.resyncMu.Unlock()
			return func() {}, nil
		}
		if probe := b.probe; probe != nil {
			seen := b.failures
			s.resyncMu.Unlock()
			select {
			case <-probe:
			case <-bg.Done():
				return nil, bg.Err()
			}
			s.resyncMu.Lock()
			failed := s.failing[server] == b && b.failures > seen
			s.resyncMu.Unlock()
			if failed {
				return nil, errServerFailing
			}
			continue // it succeeded, or fetched nothing
		}
		if d := time.Until(b.until); d > 0 {
			s.resyncMu.Unlock()
			timer := time.NewTimer(d)
			select {
			case <-timer.C:
			case <-bg.Done():
				timer.Stop()
				return nil, bg.Err()
			}
			continue
		}
		probe := make(chan struct{})
		b.probe = probe
		s.resyncMu.Unlock()
		return func() {
			s.resyncMu.Lock()
			b.probe = nil
			s.resyncMu.Unlock()
			close(probe)
		}, nil
	}
}

// track is startTracking's loop for userID.
func (s *Server) track(bg context.Context, userID string, retry resyncRetry) {
	// stop ends the loop unless again and startTracking was called since
	// the loop last cleared the flag (before it read the cache's state).
	stop := func(again bool) bool {
		s.resyncMu.Lock()
		defer s.resyncMu.Unlock()
		if again && s.tracking[userID] {
			return false
		}
		delete(s.tracking, userID)
		return true
	}
	wait := retry.first
	for attempt := 1; ; attempt++ {
		s.resyncMu.Lock()
		s.tracking[userID] = false
		s.resyncMu.Unlock()
		var fresh bool
		var end func()
		var err error
		if attempt > 1 && s.backingOff(bg, serverOf(userID)) {
			err = errBackingOff
		} else {
			end, err = s.awaitServer(bg, serverOf(userID))
		}
		if end != nil {
			fresh, err = s.trackOnce(bg, userID)
			end()
		}
		if err == nil && fresh {
			if stop(true) {
				return
			}
			attempt, wait = 0, retry.first // a new update: a new round
			continue
		}
		if bg.Err() != nil {
			stop(false)
			return
		}
		if err != nil && !retryable(err) {
			s.log.Info("resyncing a remote user's devices", "user_id", userID, "err", err)
			// An update that came during this attempt starts a new
			// round (one per such update, so not an endless loop).
			if stop(true) {
				return
			}
			attempt, wait = 0, retry.first
			continue
		}
		if attempt >= retry.attempts {
			// Left stale: the next /keys/query or update asks again, as
			// does an update that came during this last attempt.
			s.log.Warn("giving up resyncing a remote user's devices", "user_id", userID, "attempts", attempt, "err", err)
			if stop(true) {
				return
			}
			attempt, wait = 0, retry.first
			continue
		}
		d := jitter(wait)
		s.log.Info("resyncing a remote user's devices", "user_id", userID, "err", err, "stale", err == nil, "retry_in", d)
		timer := time.NewTimer(d)
		select {
		case <-timer.C:
		case <-bg.Done():
			timer.Stop()
			stop(false)
			return
		}
		wait = min(wait*2, retry.max)
	}
}

// trackOnce resyncs userID unless the cache is fresh or they share no
// room with a local user, and reports whether it is done: the cache is
// fresh, or the user is not tracked.
func (s *Server) trackOnce(bg context.Context, userID string) (bool, error) {
	ctx, cancel := context.WithTimeout(bg, resyncTimeout)
	defer cancel()
	if ok, err := s.tracked(ctx, userID); err != nil || !ok {
		return err == nil, err
	}
	if err := s.resyncShared(ctx, userID); err != nil {
		return false, err
	}
	// resyncShared may have waited for another resync, which may have
	// failed (no row) or ended stale.
	var stale bool
	err := s.db.Reader().QueryRow(ctx, `SELECT stale FROM keyserver_remote_users WHERE user_id = $1`, userID).Scan(&stale)
	if storage.IsNoRows(err) {
		return false, nil
	}
	return err == nil && !stale, err
}

// retryable reports whether a failed resync is worth trying again: not
// when the user's server refused it for good — 400, 403, 404 or 405,
// which it would answer again (a server not serving the endpoint, a user
// it does not have). A 401 may be transient (the server could not fetch
// our signing key to check the request), as are 429, 5xx and failures
// to reach it. An answer that is not a /user/devices answer for the
// user (errBadAnswer) would come again: it is not retried.
func retryable(err error) bool {
	if errors.Is(err, errBadAnswer) {
		return false
	}
	var answered interface{ HTTPStatus() int }
	if errors.As(err, &answered) {
		switch answered.HTTPStatus() {
		case http.StatusBadRequest, http.StatusForbidden, http.StatusNotFound, http.StatusMethodNotAllowed:
			return false
		}
	}
	return true
}

// errBadAnswer is a 2xx answer to GET /user/devices that does not parse,
// or that lists another user's devices.
var errBadAnswer = errors.New("bad /user/devices answer")

// resyncShared runs Resync for userID, or, when one is already running
// (in the background, or for another /keys/query), waits for that one
// instead of asking the user's server a second time. A wait that ends
// returns nil even if the other resync failed: the caller reads the
// cache and finds it fresh or not. Nor does it ask when the cache is
// fresh by the time it would: a resync that finished just before (the
// one an update started, and a /keys/query that saw the cache stale
// before it finished) already fetched what there is to fetch.
func (s *Server) resyncShared(ctx context.Context, userID string) error {
	s.resyncMu.Lock()
	if done, ok := s.resyncing[userID]; ok {
		s.resyncMu.Unlock()
		select {
		case <-done:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	done := make(chan struct{})
	s.resyncing[userID] = done
	s.resyncMu.Unlock()
	defer func() {
		s.resyncMu.Lock()
		delete(s.resyncing, userID)
		s.resyncMu.Unlock()
		close(done)
	}()
	// A resync that ran before this one committed before it left
	// s.resyncing, so this read sees what it wrote.
	var stale bool
	err := s.db.Reader().QueryRow(ctx, `SELECT stale FROM keyserver_remote_users WHERE user_id = $1`, userID).Scan(&stale)
	if err == nil && !stale {
		return nil
	}
	if err != nil && !storage.IsNoRows(err) {
		return err
	}
	return s.Resync(ctx, userID)
}

// resyncTracked fills the cache of those of users (all remote, none
// cached) who share a room with a local user, in parallel, and returns
// the ones it filled. Such a user's device list is tracked: it is
// fetched whole once (GET /user/devices) and kept up to date by their
// server's m.device_list_update EDUs, so later /keys/query calls ask no
// one. Spec: client-server-api, "Tracking the device list for a user";
// server-server-api, "Device Management".
func (s *Server) resyncTracked(ctx context.Context, users []string) ([]string, error) {
	if s.fed == nil || s.background() == nil {
		return nil, nil
	}
	var tracked []string
	for _, userID := range users {
		ok, err := s.tracked(ctx, userID)
		if err != nil {
			return nil, err
		}
		if ok {
			tracked = append(tracked, userID)
		}
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	var filled []string
	for _, userID := range tracked {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.resyncShared(ctx, userID); err != nil {
				s.log.Info("resyncing a remote user's devices", "user_id", userID, "err", err)
				return
			}
			mu.Lock()
			filled = append(filled, userID)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return filled, nil
}

func (s *Server) background() context.Context {
	s.resyncMu.Lock()
	defer s.resyncMu.Unlock()
	return s.bg
}

// Resync replaces the cache of a remote user's keys with what their
// server's GET /user/devices answers.
//
// Local clients are told the user's devices changed only when the
// answer is newer than every update they were told of: while the cache
// is stale, its stream_id is the highest stream ID of the updates that
// made it so (each told clients already; markStale), and a resync that
// a /keys/query started (no row yet) follows an answer the client has.
// Announcing again would make a client that waits for the change of a
// later update (a device renamed just after its keys were uploaded) see
// this announcement instead and read the cache before that update
// arrived (Complement
// TestFederationKeyUploadQuery/Can_query_remote_device_keys_using_POST).
//
// An update that arrives while the answer is on its way (markStale, or
// an applied update, bumps updated_ts) leaves the cache stale: the
// answer may predate it. Whether one arrived is whether updated_ts moved
// since the fetch began, not how it compares with the fetch's start
// time: updated_ts only grows (bumpUpdatedTS), while an update and the
// fetch it starts commonly fall in the same millisecond, which a time
// comparison took for an update during the fetch — leaving the fresh
// answer stale, so that the next /keys/query fetched the list a second
// time for one update (Complement msc3902 "Device list tracked for new
// members in partial state room", flaky).
func (s *Server) Resync(ctx context.Context, userID string) error {
	if s.fed == nil {
		return errors.New("federation is disabled")
	}
	before := int64(-1) // updated_ts is never negative: -1 stands for no row
	err := s.db.Reader().QueryRow(ctx, `SELECT updated_ts FROM keyserver_remote_users WHERE user_id = $1`, userID).Scan(&before)
	if err != nil && !storage.IsNoRows(err) {
		return err
	}
	raw, err := s.fed.RemoteUserDevices(ctx, serverOf(userID), userID)
	if err != nil {
		if !errors.Is(err, context.Canceled) { // a timeout may be the server's
			s.noteServer(serverOf(userID), err)
		}
		return err
	}
	s.noteServer(serverOf(userID), nil)
	var resp struct {
		UserID   string `json:"user_id"`
		StreamID int64  `json:"stream_id"`
		Devices  []struct {
			DeviceID    string          `json:"device_id"`
			DisplayName string          `json:"device_display_name"`
			Keys        json.RawMessage `json:"keys"`
		} `json:"devices"`
		MasterKey      json.RawMessage `json:"master_key"`
		SelfSigningKey json.RawMessage `json:"self_signing_key"`
	}
	if err := json.Unmarshal(raw, &resp); err != nil {
		return fmt.Errorf("%w: %w", errBadAnswer, err)
	}
	if resp.UserID != userID {
		return fmt.Errorf("%w: it is for %q, not %q", errBadAnswer, resp.UserID, userID)
	}
	return s.db.Write(ctx, func(tx storage.Tx) error {
		if err := dropRemoteKeys(ctx, tx, userID); err != nil {
			return err
		}
		if s.sharedInTx != nil {
			// The user may have stopped sharing every room with a local
			// user while the answer was on its way, before they had a
			// row for UntrackInTx to mark: the list is then tracked no
			// longer, and this answer is not stored as a fresh copy.
			shared, err := s.sharedInTx(ctx, tx, []string{userID})
			if err != nil {
				return err
			}
			if len(shared) == 0 {
				return markStale(ctx, tx, userID, 0, s.nowMillis())
			}
		}
		for _, d := range resp.Devices {
			keyJSON, err := remoteDeviceJSON(userID, d.DeviceID, d.DisplayName, d.Keys)
			if err != nil {
				continue // a device without (valid) keys is not one to encrypt for
			}
			if err := putRemoteDevice(ctx, tx, userID, d.DeviceID, keyJSON); err != nil {
				return err
			}
		}
		for keyType, k := range map[string]json.RawMessage{keyTypeMaster: resp.MasterKey, keyTypeSelfSigning: resp.SelfSigningKey} {
			if !keyOwnerIs(k, userID, "") {
				continue
			}
			if _, err := tx.Exec(ctx, `INSERT INTO keyserver_remote_cross_signing_keys (user_id, key_type, key_json)
				VALUES ($1, $2, $3)`, userID, keyType, string(k)); err != nil {
				return err
			}
		}
		var told int64
		err := tx.QueryRow(ctx, `SELECT stream_id FROM keyserver_remote_users WHERE user_id = $1`, userID).Scan(&told)
		tracked := err == nil
		if err != nil && !storage.IsNoRows(err) {
			return err
		}
		if _, err := tx.Exec(ctx, `
			INSERT INTO keyserver_remote_users (user_id, stream_id, stale, updated_ts) VALUES ($1, $2, FALSE, $3)
			ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id,
				stale = (keyserver_remote_users.updated_ts <> $4), updated_ts = `+bumpUpdatedTS("excluded.updated_ts"),
			userID, resp.StreamID, s.nowMillis(), before); err != nil {
			return err
		}
		if tracked && resp.StreamID > told {
			return recordDeviceListChange(ctx, s.db, tx, s.notify, userID)
		}
		return nil
	})
}

// remoteDeviceJSON checks a remote device's keys name it and returns
// them with unsigned.device_display_name set as /keys/query shows it.
func remoteDeviceJSON(userID, deviceID, displayName string, keys json.RawMessage) (string, error) {
	if !keyOwnerIs(keys, userID, deviceID) {
		return "", errors.New("the keys do not belong to the device")
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(keys, &obj); err != nil {
		return "", err
	}
	delete(obj, "unsigned")
	if displayName != "" {
		obj["unsigned"], _ = json.Marshal(map[string]string{"device_display_name": displayName})
	}
	out, err := json.Marshal(obj)
	return string(out), err
}

func putRemoteDevice(ctx context.Context, tx storage.Tx, userID, deviceID, keyJSON string) error {
	_, err := tx.Exec(ctx, `INSERT INTO keyserver_remote_device_keys (user_id, device_id, key_json) VALUES ($1, $2, $3)
		ON CONFLICT (user_id, device_id) DO UPDATE SET key_json = excluded.key_json`, userID, deviceID, keyJSON)
	return err
}

// RemoteDeviceListUpdate takes an m.device_list_update about a remote
// user (the federation API checked the user belongs to the origin):
// applied to the cache when its prev_id is the stream ID we hold, else
// the cache is marked stale and resynced. Local clients sharing a room
// with the user see them in device_lists.changed either way.
func (s *Server) RemoteDeviceListUpdate(ctx context.Context, userID string, update json.RawMessage) error {
	if s.isLocal(userID) || serverOf(userID) == "" {
		return nil
	}
	var u struct {
		DeviceID    string          `json:"device_id"`
		DisplayName string          `json:"device_display_name"`
		StreamID    int64           `json:"stream_id"`
		PrevID      []int64         `json:"prev_id"`
		Deleted     bool            `json:"deleted"`
		Keys        json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(update, &u); err != nil {
		return mxerr.New(mxerr.BadJSON, "m.device_list_update: %v", err)
	}
	// Whether a local user shares a room with the user now.
	shared, err := s.tracked(ctx, userID)
	if err != nil {
		return err
	}
	applied := false
	err = s.db.Write(ctx, func(tx storage.Tx) error {
		applied = false
		if len(u.Keys) == 0 && !u.Deleted && shared {
			// A device with no keys, of which we hold none either, of a
			// user local clients already know of: it is not in
			// /keys/query answers, so no client has anything to refresh
			// (a server announcing a joiner's devices sends such
			// updates; Complement TestDeviceListsUpdateOverFederation
			// wants no change seen for them). A user no local user
			// shares a room with yet — a member of a partial-state room,
			// whose state lacks them until the resync (MSC3706) — gets
			// the change recorded: local users see it once the room's
			// state names them (Complement msc3902
			// CanReceiveDeviceListUpdateDuringPartialStateJoin).
			var held int
			if err := tx.QueryRow(ctx, `SELECT COUNT(*) FROM keyserver_remote_device_keys WHERE user_id = $1 AND device_id = $2`,
				userID, u.DeviceID).Scan(&held); err != nil {
				return err
			}
			if held == 0 {
				applied = true
				return nil
			}
		}
		var stored int64
		var stale bool
		err := tx.QueryRow(ctx, `SELECT stream_id, stale FROM keyserver_remote_users WHERE user_id = $1`, userID).Scan(&stored, &stale)
		if err != nil && !storage.IsNoRows(err) {
			return err
		}
		cached := err == nil && !stale
		if cached && u.StreamID <= stored {
			applied = true // seen already
			return nil
		}
		follows := slices.Contains(u.PrevID, stored) || (len(u.PrevID) == 0 && stored == 0)
		if cached && follows && u.DeviceID != "" {
			switch {
			case u.Deleted:
				if _, err := tx.Exec(ctx, `DELETE FROM keyserver_remote_device_keys WHERE user_id = $1 AND device_id = $2`,
					userID, u.DeviceID); err != nil {
					return err
				}
				applied = true
			case len(u.Keys) > 0:
				if keyJSON, err := remoteDeviceJSON(userID, u.DeviceID, u.DisplayName, u.Keys); err == nil {
					if err := putRemoteDevice(ctx, tx, userID, u.DeviceID, keyJSON); err != nil {
						return err
					}
					applied = true
				}
			}
		}
		if applied {
			if _, err := tx.Exec(ctx, `UPDATE keyserver_remote_users SET stream_id = $2, updated_ts = `+bumpUpdatedTS("$3")+`
				WHERE user_id = $1`, userID, u.StreamID, s.nowMillis()); err != nil {
				return err
			}
		} else if err := markStale(ctx, tx, userID, u.StreamID, s.nowMillis()); err != nil {
			return err
		}
		return recordDeviceListChange(ctx, s.db, tx, s.notify, userID)
	})
	if err == nil && !applied {
		s.startTracking(userID)
	}
	return err
}

// RemoteSigningKeyUpdate takes an m.signing_key_update: the user's
// cross-signing keys (and so their devices' signatures) changed, so the
// cache is resynced; clients learn it as a device change.
func (s *Server) RemoteSigningKeyUpdate(ctx context.Context, userID string, update json.RawMessage) error {
	if s.isLocal(userID) || serverOf(userID) == "" {
		return nil
	}
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		if err := markStale(ctx, tx, userID, 0, s.nowMillis()); err != nil {
			return err
		}
		return recordDeviceListChange(ctx, s.db, tx, s.notify, userID)
	})
	if err == nil {
		s.startTracking(userID)
	}
	return err
}

// markStale marks userID's cache stale, creating the row for a user not
// cached yet, so that a resync already under way (whose answer may
// predate the update) leaves it stale too. streamID is the update's
// stream ID (0 if it has none): the row keeps the highest one clients
// were told of, which Resync compares its answer with. nowMillis is the
// time of the update.
func markStale(ctx context.Context, tx storage.Tx, userID string, streamID, nowMillis int64) error {
	_, err := tx.Exec(ctx, `INSERT INTO keyserver_remote_users (user_id, stream_id, stale, updated_ts) VALUES ($1, $2, TRUE, $3)
		ON CONFLICT (user_id) DO UPDATE SET stale = TRUE, updated_ts = `+bumpUpdatedTS("excluded.updated_ts")+`,
			stream_id = CASE WHEN excluded.stream_id > keyserver_remote_users.stream_id THEN excluded.stream_id
				ELSE keyserver_remote_users.stream_id END`, userID, streamID, nowMillis)
	return err
}

// bumpUpdatedTS is the SQL for a keyserver_remote_users row's new
// updated_ts: now (an SQL expression), or one more than the old value
// when now is not later, so that every write to the row changes it and
// Resync can tell whether an update came while its fetch was under way
// even within one millisecond (or with a clock that stepped back).
func bumpUpdatedTS(now string) string {
	return `CASE WHEN ` + now + ` > keyserver_remote_users.updated_ts THEN ` + now +
		` ELSE keyserver_remote_users.updated_ts + 1 END`
}

// latestPosition is the user's last device-list stream position before
// (below) pos, or 0; with pos 0, their last one.
func latestPosition(ctx context.Context, q storage.Querier, userID string, below int64) (int64, error) {
	var p sql.NullInt64
	query := `SELECT MAX(position) FROM keyserver_device_list_changes WHERE user_id = $1 AND position < $2`
	if below == 0 {
		query = `SELECT MAX(position) FROM keyserver_device_list_changes WHERE user_id = $1 AND $2 = 0`
	}
	err := q.QueryRow(ctx, query, userID, below).Scan(&p)
	return p.Int64, err
}

// MembersRevealed takes the remote members of a room whose partial-state
// resync just completed (MSC3706): while the room was partial its state
// lacked them, so a device-list update they sent meanwhile was recorded
// when no local user shared a room with them, and a /sync that ran
// before the resync filtered it out. Each of them with a change recorded
// since sinceMillis (the join's time) gets a new change, after the
// resync, which local users now sharing the room see; nothing of theirs
// is fetched here.
//
// Nothing is lost by not fetching: an update that could not be applied
// (no cache, or a stream ID that does not follow ours) or a signing-key
// update marked the user's cache stale when it arrived (markStale), and
// one that was applied kept the cache current. So the client told of the
// change re-queries, and /keys/query, finding no fresh cache for a user
// now tracked, asks their server and caches the answer (resyncTracked).
// Fetching eagerly instead sends GET /user/devices unasked, which the
// spec does not call for and servers may not serve (Complement msc3902
// CanReceiveDeviceListUpdateDuringPartialStateJoin,
// CanReceiveSigningKeyUpdateDuringPartialStateJoin and "Device list
// tracked for new members in partial state room", whose fake server
// fails on it). Members without such an update are not reported:
// nothing of theirs changed.
// Spec: client-server-api, "Tracking the device list for a user";
// server-server-api, "Device Management".
func (s *Server) MembersRevealed(ctx context.Context, userIDs []string, sinceMillis int64) error {
	var changed []string
	for _, userID := range userIDs {
		if s.isLocal(userID) {
			continue
		}
		var n int
		if err := s.db.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM keyserver_device_list_changes
			WHERE user_id = $1 AND changed_ts >= $2`, userID, sinceMillis).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			changed = append(changed, userID)
		}
	}
	if len(changed) == 0 {
		return nil
	}
	return s.db.Write(ctx, func(tx storage.Tx) error {
		return recordDeviceListChange(ctx, s.db, tx, s.notify, changed...)
	})
}

// MembersDropped takes the remote users a room's partial state held as
// joined whom its completed resync shows were not (MSC3706). Those who
// now share no room with a local user are no longer tracked: their
// cached device lists and cross-signing keys are dropped, for their
// server sends no more updates about them, so that tracking them again
// — they join a room with a local user — fetches the lists afresh
// instead of serving a copy nothing kept current. Users still sharing a
// room keep theirs: they are still tracked. As in UntrackInTx, the row is
// kept and marked stale rather than deleted, so that a resync under way
// finds it changed and does not store its answer as fresh.
// Spec: client-server-api, "Tracking the device list for a user" (a user
// who stops sharing rooms may change devices unseen); Complement msc3902
// "Device list tracking for user incorrectly believed to be in room when
// they rejoin after partial state join completes".
func (s *Server) MembersDropped(ctx context.Context, userIDs []string) error {
	var untracked []string
	for _, userID := range userIDs {
		if s.isLocal(userID) || serverOf(userID) == "" {
			continue
		}
		ok, err := s.tracked(ctx, userID)
		if err != nil {
			return err
		}
		if !ok {
			untracked = append(untracked, userID)
		}
	}
	if len(untracked) == 0 {
		return nil
	}
	// In user ID order, the order UntrackInTx locks rows in, so that the
	// two cannot deadlock on PostgreSQL.
	slices.Sort(untracked)
	return s.db.Write(ctx, func(tx storage.Tx) error {
		for _, userID := range untracked {
			if err := dropRemoteKeys(ctx, tx, userID); err != nil {
				return err
			}
			if err := markStale(ctx, tx, userID, 0, s.nowMillis()); err != nil {
				return err
			}
		}
		return nil
	})
}

// dropRemoteKeys deletes userID's cached device keys and cross-signing
// keys (not the record of when they were fetched).
func dropRemoteKeys(ctx context.Context, tx storage.Tx, userID string) error {
	for _, q := range []string{
		`DELETE FROM keyserver_remote_device_keys WHERE user_id = $1`,
		`DELETE FROM keyserver_remote_cross_signing_keys WHERE user_id = $1`,
	} {
		if _, err := tx.Exec(ctx, q, userID); err != nil {
			return err
		}
	}
	return nil
}
