package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"time"

	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// User-interactive authentication (UIA).
//
// Spec: client-server-api, "User-Interactive Authentication API".
//
// Sessions are rows in uia_sessions rather than process memory: a restart
// or a second clientapi replica can continue a flow, and a session's hold
// on a registration token (the token's pending count) changes in the same
// transaction as the session. A session is bound to one operation
// (purpose) and one user, expires after uiaSessionLifetime, and is
// consumed — deleted — in the same transaction as the operation it
// authorised, so it authorises exactly one request.

// Authentication stage types. Spec: client-server-api, "Authentication types".
const (
	stagePassword          = "m.login.password"
	stageDummy             = "m.login.dummy"
	stageRegistrationToken = "m.login.registration_token"
	// stageSSO is completed only through its fallback page (sso_uia.go).
	stageSSO = "m.login.sso"
)

// uiaSessionLifetime bounds how long a client may take to finish a flow.
const uiaSessionLifetime = 30 * time.Minute

// uiaSpec describes what one endpoint requires.
type uiaSpec struct {
	// purpose names the operation, e.g. "register" or "delete_devices".
	purpose string
	// localpart is the authenticated caller ("" for registration); the
	// m.login.password stage must prove this user.
	localpart string
	// flows lists the accepted sequences of stages.
	flows [][]string
	// clientIP keys the rate limit on password attempts.
	clientIP string
}

// uiaSession is a session whose stages satisfy one of the flows.
type uiaSession struct {
	id string
}

// uiaChallenge is the 401 answer that asks the client to (continue to)
// authenticate. handle writes its body as is: a challenge without an
// error carries no errcode, which is how clients tell it apart from a
// plain 401 error.
type uiaChallenge struct {
	body map[string]any
}

func (c *uiaChallenge) Error() string { return "user-interactive authentication required" }

// authDict is the auth object of a UIA request.
// Spec: client-server-api, "Authentication types".
type authDict struct {
	Type       string          `json:"type"`
	Session    string          `json:"session"`
	Identifier *userIdentifier `json:"identifier"`
	User       string          `json:"user"` // deprecated m.login.password form
	Password   string          `json:"password"`
	Token      string          `json:"token"` // m.login.registration_token
}

// storedSession is a uia_sessions row.
type storedSession struct {
	id        string
	purpose   string
	localpart string
	completed []string
	createdTS int64
}

// userInteractiveAuth runs one round of UIA for a request whose auth
// object is raw (nil when absent). It returns the session once a flow is
// complete; otherwise a *uiaChallenge (401) or another error. The caller
// performs the operation and calls consumeUIASession in the same write.
func (s *Server) userInteractiveAuth(ctx context.Context, spec uiaSpec, raw json.RawMessage) (*uiaSession, error) {
	now := time.Now()
	spec, err := s.withSSOStage(ctx, spec)
	if err != nil {
		return nil, err
	}
	if len(raw) == 0 || string(raw) == "null" {
		// Spec: a request to a UIA endpoint never succeeds without auth.
		sess, err := s.newUIASession(ctx, spec, now)
		if err != nil {
			return nil, err
		}
		return nil, s.challenge(spec, sess, nil)
	}
	var auth authDict
	if err := json.Unmarshal(raw, &auth); err != nil {
		return nil, mxerr.Wrap(err, mxerr.BadJSON, "auth must be an object with string fields")
	}
	var sess storedSession
	if auth.Session == "" {
		// The client may attempt a stage straight away; the session
		// starts here.
		created, err := s.newUIASession(ctx, spec, now)
		if err != nil {
			return nil, err
		}
		sess = created
	} else {
		found, ok, err := loadUIASession(ctx, s.db.Reader(), auth.Session)
		if err != nil {
			return nil, err
		}
		if !ok || found.purpose != spec.purpose || found.localpart != spec.localpart ||
			now.Sub(time.UnixMilli(found.createdTS)) > uiaSessionLifetime {
			fresh, err := s.newUIASession(ctx, spec, now)
			if err != nil {
				return nil, err
			}
			return nil, s.challenge(spec, fresh, mxerr.New(mxerr.Forbidden, "unknown or expired authentication session; start again with the new session"))
		}
		sess = found
	}

	if auth.Type != "" && !slices.Contains(sess.completed, auth.Type) {
		if !flowsOffer(spec.flows, auth.Type) {
			return nil, s.challenge(spec, sess, mxerr.New(mxerr.Forbidden, "authentication type %q is not offered here", auth.Type))
		}
		// Auth naming another user than the one authenticating is not a
		// failed stage to retry but a refusal: 403, as Synapse answers
		// and as Complement's "DELETE /device/{deviceId} requires UI auth
		// user to match device owner" expects.
		if err := s.checkStageUser(spec, auth); err != nil {
			return nil, err
		}
		if err := s.runStage(ctx, spec, &sess, auth, now); err != nil {
			var mx *mxerr.Error
			if errors.As(err, &mx) && mx.Code == mxerr.Forbidden {
				return nil, s.challenge(spec, sess, mx)
			}
			return nil, err
		}
	}
	for _, flow := range spec.flows {
		if containsAll(sess.completed, flow) {
			return &uiaSession{id: sess.id}, nil
		}
	}
	return nil, s.challenge(spec, sess, nil)
}

// checkStageUser refuses a password stage whose identifier names a
// user other than the one the request authenticates (spec.localpart is
// "" for registration, where there is none yet).
func (s *Server) checkStageUser(spec uiaSpec, auth authDict) error {
	if auth.Type != stagePassword || spec.localpart == "" || auth.Identifier == nil && auth.User == "" {
		return nil
	}
	named, err := s.identifiedLocalpart(auth.Identifier, auth.User)
	if err != nil {
		return nil // runStage answers an unreadable identifier
	}
	if named != spec.localpart {
		return mxerr.New(mxerr.Forbidden, "the identifier does not name the authenticated user")
	}
	return nil
}

// runStage attempts one stage and records it as completed.
func (s *Server) runStage(ctx context.Context, spec uiaSpec, sess *storedSession, auth authDict, now time.Time) error {
	completed := append(slices.Clone(sess.completed), auth.Type)
	completedJSON, _ := json.Marshal(completed)
	switch auth.Type {
	case stageDummy:
		// Spec: "Dummy Auth" always succeeds.
	case stagePassword:
		// Spec: "Password-based". Guessing is rate limited like login.
		if err := s.loginLimit.Allow(spec.clientIP); err != nil {
			return err
		}
		localpart := spec.localpart
		if auth.Identifier != nil || auth.User != "" {
			if _, err := s.identifiedLocalpart(auth.Identifier, auth.User); err != nil {
				return mxerr.New(mxerr.Forbidden, "invalid user or password")
			}
		}
		acct, ok, err := lookupAccount(ctx, s.db.Reader(), localpart)
		if err != nil {
			return err
		}
		if !checkPassword(acct.passwordHash, auth.Password) || !ok || acct.deactivated {
			return mxerr.New(mxerr.Forbidden, "invalid user or password")
		}
	case stageRegistrationToken:
		// Spec: "Token-authenticated registration". Passing the stage
		// reserves one use (pending) until registration completes or the
		// session expires.
		if auth.Token == "" {
			return mxerr.New(mxerr.Forbidden, "missing registration token")
		}
		return s.db.Write(ctx, func(tx storage.Tx) error {
			res, err := tx.Exec(ctx, `
				UPDATE registration_tokens SET pending = pending + 1
				WHERE token = $1 AND (expiry_ts IS NULL OR expiry_ts > $2)
				  AND (uses_allowed IS NULL OR pending + completed < uses_allowed)`,
				auth.Token, now.UnixMilli())
			if err != nil {
				return err
			}
			if n, _ := res.RowsAffected(); n == 0 {
				return mxerr.New(mxerr.Forbidden, "invalid, expired or used-up registration token")
			}
			res, err = tx.Exec(ctx, `
				UPDATE uia_sessions SET completed = $1, registration_token = $2
				WHERE session_id = $3 AND registration_token IS NULL`,
				string(completedJSON), auth.Token, sess.id)
			if err != nil {
				return err
			}
			if n, _ := res.RowsAffected(); n == 0 {
				// Consumed or expired meanwhile: roll the reservation back.
				return mxerr.New(mxerr.Forbidden, "the authentication session has ended")
			}
			tx.AfterCommit(func() { sess.completed = completed })
			return nil
		})
	case stageSSO:
		// Spec: "SSO during User-Interactive Authentication": the stage
		// is done in a browser, through the fallback page; the client
		// then retries with the session only.
		return mxerr.New(mxerr.Forbidden, "complete m.login.sso through /_matrix/client/v3/auth/m.login.sso/fallback/web?session=%s", sess.id)
	default:
		return mxerr.New(mxerr.Forbidden, "authentication type %q is not supported", auth.Type)
	}
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE uia_sessions SET completed = $1 WHERE session_id = $2`, string(completedJSON), sess.id)
		return err
	})
	if err != nil {
		return err
	}
	sess.completed = completed
	return nil
}

// newUIASession stores a fresh session for spec.
func (s *Server) newUIASession(ctx context.Context, spec uiaSpec, now time.Time) (storedSession, error) {
	sess := storedSession{id: newToken(""), purpose: spec.purpose, localpart: spec.localpart, createdTS: now.UnixMilli()}
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		_, err := tx.Exec(ctx, `
			INSERT INTO uia_sessions (session_id, purpose, localpart, completed, created_ts)
			VALUES ($1, $2, $3, '[]', $4)`, sess.id, sess.purpose, sess.localpart, sess.createdTS)
		return err
	})
	return sess, err
}

func loadUIASession(ctx context.Context, q storage.Querier, id string) (storedSession, bool, error) {
	sess := storedSession{id: id}
	var completed string
	err := q.QueryRow(ctx, `SELECT purpose, localpart, completed, created_ts FROM uia_sessions WHERE session_id = $1`, id).
		Scan(&sess.purpose, &sess.localpart, &completed, &sess.createdTS)
	if storage.IsNoRows(err) {
		return sess, false, nil
	}
	if err != nil {
		return sess, false, err
	}
	if err := json.Unmarshal([]byte(completed), &sess.completed); err != nil {
		return sess, false, err
	}
	return sess, true, nil
}

// consumeUIASession ends the session inside the write that performs the
// operation it authorised, so it cannot authorise a second one. A held
// registration token use moves from pending to completed.
func consumeUIASession(ctx context.Context, tx storage.Tx, sess *uiaSession) error {
	var token *string
	err := tx.QueryRow(ctx, `DELETE FROM uia_sessions WHERE session_id = $1 RETURNING registration_token`, sess.id).Scan(&token)
	if storage.IsNoRows(err) {
		return mxerr.New(mxerr.Forbidden, "the authentication session was already used or has expired")
	}
	if err != nil {
		return err
	}
	if token == nil {
		return nil
	}
	res, err := tx.Exec(ctx, `
		UPDATE registration_tokens SET pending = pending - 1, completed = completed + 1
		WHERE token = $1`, *token)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return mxerr.New(mxerr.Forbidden, "the registration token has been revoked")
	}
	return nil
}

// expireUIASessions deletes sessions older than the lifetime and releases
// the registration-token uses they held.
func expireUIASessions(ctx context.Context, tx storage.Tx, now time.Time) error {
	cutoff := now.Add(-uiaSessionLifetime).UnixMilli()
	if _, err := tx.Exec(ctx, `
		UPDATE registration_tokens SET pending = pending - (
			SELECT COUNT(*) FROM uia_sessions u
			WHERE u.registration_token = registration_tokens.token AND u.created_ts < $1)
		WHERE token IN (SELECT registration_token FROM uia_sessions
			WHERE created_ts < $1 AND registration_token IS NOT NULL)`, cutoff); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, `DELETE FROM uia_sessions WHERE created_ts < $1`, cutoff)
	return err
}

// challenge builds the 401 body: flows, params, session, completed, and
// the error of a failed attempt, if any.
// Spec: client-server-api, "User-interactive API in the REST API".
func (s *Server) challenge(spec uiaSpec, sess storedSession, failed *mxerr.Error) error {
	flows := make([]map[string]any, len(spec.flows))
	for i, f := range spec.flows {
		flows[i] = map[string]any{"stages": f}
	}
	body := map[string]any{"flows": flows, "params": map[string]any{}, "session": sess.id}
	if len(sess.completed) > 0 {
		body["completed"] = sess.completed
	}
	if failed != nil {
		body["errcode"] = string(failed.Code)
		body["error"] = failed.Message
	}
	return &uiaChallenge{body: body}
}

func flowsOffer(flows [][]string, stage string) bool {
	for _, f := range flows {
		if slices.Contains(f, stage) {
			return true
		}
	}
	return false
}

func containsAll(have, want []string) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

// ChallengeBody is the 401 body of a UIA challenge, for components whose
// endpoints authenticate through RequirePassword and write it themselves.
func (c *uiaChallenge) ChallengeBody() map[string]any { return c.body }

// RequirePassword runs user-interactive authentication with the
// m.login.password flow for the caller of r, on behalf of an endpoint
// another component serves (the key server's device_signing/upload).
// purpose names the operation; a session started for one purpose cannot
// authorise another. Until the flow is complete it returns an error with
// a ChallengeBody() method whose body the caller writes with status 401.
// Once complete it returns consume, which the caller must run inside the
// write that performs the operation, so the session authorises it once.
func (s *Server) RequirePassword(ctx context.Context, r *http.Request, purpose string, auth json.RawMessage) (consume func(context.Context, storage.Tx) error, err error) {
	d := authn.FromContext(ctx)
	if d == nil {
		return nil, mxerr.New(mxerr.MissingToken, "missing access token")
	}
	if d.IsGuest {
		return nil, mxerr.New(mxerr.GuestAccessForbidden, "guests cannot authenticate with a password")
	}
	sess, err := s.userInteractiveAuth(ctx, s.passwordUIA(purpose, s.localpart(d.UserID), r), auth)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, tx storage.Tx) error { return consumeUIASession(ctx, tx, sess) }, nil
}
