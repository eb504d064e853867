package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
)

// requestError is a failed client-server API call: either the server
// answered with a non-200 status (Status, Errcode, Msg, Body) or the request
// never got an answer (Err).
type requestError struct {
	Op      string // short name of the operation: register, createRoom, send, sync, ...
	Status  int
	Errcode string
	Msg     string
	Body    []byte // the raw response body, for the UIA 401 step
	Err     error
}

func (e *requestError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %v", e.Op, e.Err)
	}
	return fmt.Sprintf("%s: HTTP %d %s: %s", e.Op, e.Status, e.Errcode, e.Msg)
}

func (e *requestError) Unwrap() error { return e.Err }

// errorKey groups errors for counting: the operation and the HTTP status and
// Matrix errcode, or the kind of transport failure. The keys are what the
// report reads to tell "not implemented" (404 M_UNRECOGNIZED) from failures.
func errorKey(err error) string {
	var re *requestError
	if !errors.As(err, &re) {
		return err.Error()
	}
	switch {
	case re.Err == nil:
		code := re.Errcode
		if code == "" {
			code = "(no errcode)"
		}
		return fmt.Sprintf("%s: HTTP %d %s", re.Op, re.Status, code)
	case errors.Is(re.Err, context.DeadlineExceeded):
		return re.Op + ": timeout"
	case errors.Is(re.Err, context.Canceled):
		return re.Op + ": canceled"
	default:
		return re.Op + ": transport error"
	}
}

// isUnrecognized reports whether err is the server saying it does not have
// the endpoint at all.
func isUnrecognized(err error) bool {
	var re *requestError
	return errors.As(err, &re) && re.Status == http.StatusNotFound && re.Errcode == "M_UNRECOGNIZED"
}

// client is one logged-in Matrix user (or an anonymous caller before
// registration). Immutable after registration; safe for concurrent use.
type client struct {
	base   string // homeserver base URL, without a trailing slash
	hc     *http.Client
	token  string
	userID string
	txn    atomic.Int64 // transaction-ID counter for this device
}

func newHTTPClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	// Every listener keeps a long-poll open and every sender a connection:
	// the default of 2 idle connections per host would make the tool, not
	// the server, open and close connections under load.
	tr.MaxIdleConns = 0
	tr.MaxIdleConnsPerHost = 4096
	return &http.Client{Transport: tr}
}

// do calls the API and decodes a 200 answer into out (when not nil). It
// returns the size of the response body.
func (c *client) do(ctx context.Context, op, method, path string, query url.Values, body, out any) (int, error) {
	var reqBody io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, &requestError{Op: op, Err: err}
		}
		reqBody = bytes.NewReader(b)
	}
	u := c.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, reqBody)
	if err != nil {
		return 0, &requestError{Op: op, Err: err}
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, &requestError{Op: op, Err: err}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return len(data), &requestError{Op: op, Err: err}
	}
	if resp.StatusCode != http.StatusOK {
		var mErr struct {
			Errcode string `json:"errcode"`
			Error   string `json:"error"`
		}
		_ = json.Unmarshal(data, &mErr)
		return len(data), &requestError{Op: op, Status: resp.StatusCode, Errcode: mErr.Errcode, Msg: mErr.Error, Body: data}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return len(data), &requestError{Op: op, Err: fmt.Errorf("decoding the answer: %w", err)}
		}
	}
	return len(data), nil
}

// registration says how the tool creates its users.
type registration struct {
	mode         string // "dummy" (open registration, m.login.dummy) or "shared-secret"
	sharedSecret string
}

type loginResponse struct {
	UserID      string `json:"user_id"`
	AccessToken string `json:"access_token"`
	DeviceID    string `json:"device_id"`
}

// register creates the account username and returns a client logged in as it.
func (r registration) register(ctx context.Context, hc *http.Client, base, username string) (*client, error) {
	c := &client{base: base, hc: hc}
	password := randomHex(16)
	var login loginResponse
	var err error
	switch r.mode {
	case "shared-secret":
		login, err = c.registerSharedSecret(ctx, username, password, r.sharedSecret)
	default:
		login, err = c.registerDummy(ctx, username, password)
	}
	if err != nil {
		return nil, err
	}
	if login.AccessToken == "" {
		return nil, &requestError{Op: "register", Err: errors.New("no access_token in the answer")}
	}
	c.token, c.userID = login.AccessToken, login.UserID
	return c, nil
}

// registerDummy registers through User-Interactive Authentication with the
// m.login.dummy stage: the first request gets 401 with a session and the
// flows; the second repeats it with the dummy auth for that session.
// Spec: client-server-api, "POST /_matrix/client/v3/register" and
// "User-Interactive Authentication API".
func (c *client) registerDummy(ctx context.Context, username, password string) (loginResponse, error) {
	req := map[string]any{
		"username":                    username,
		"password":                    password,
		"initial_device_display_name": "myelin-bench",
	}
	const path = "/_matrix/client/v3/register"
	var login loginResponse
	_, err := c.do(ctx, "register", http.MethodPost, path, nil, req, &login)
	if err == nil {
		return login, nil // a server that needs no UIA at all
	}
	var re *requestError
	if !errors.As(err, &re) || re.Status != http.StatusUnauthorized {
		return login, err
	}
	var uia struct {
		Session string `json:"session"`
		Flows   []struct {
			Stages []string `json:"stages"`
		} `json:"flows"`
	}
	if err := json.Unmarshal(re.Body, &uia); err != nil {
		return login, &requestError{Op: "register", Err: fmt.Errorf("decoding the UIA 401: %w", err)}
	}
	dummy := false
	for _, f := range uia.Flows {
		if len(f.Stages) == 1 && f.Stages[0] == "m.login.dummy" {
			dummy = true
		}
	}
	if !dummy {
		return login, &requestError{Op: "register", Status: re.Status, Errcode: "NO_DUMMY_FLOW",
			Msg: fmt.Sprintf("the server offers no m.login.dummy flow (body %s); use -auth shared-secret", re.Body)}
	}
	req["auth"] = map[string]any{"type": "m.login.dummy", "session": uia.Session}
	_, err = c.do(ctx, "register", http.MethodPost, path, nil, req, &login)
	return login, err
}

// registerSharedSecret uses the shared-secret admin registration that
// Synapse introduced and Dendrite and Myelin implement: GET a nonce, then
// POST the user with an HMAC-SHA1 over nonce, user, password and admin flag.
func (c *client) registerSharedSecret(ctx context.Context, username, password, secret string) (loginResponse, error) {
	const path = "/_synapse/admin/v1/register"
	var login loginResponse
	var nonce struct {
		Nonce string `json:"nonce"`
	}
	if _, err := c.do(ctx, "register", http.MethodGet, path, nil, nil, &nonce); err != nil {
		return login, err
	}
	req := map[string]any{
		"nonce":    nonce.Nonce,
		"username": username,
		"password": password,
		"admin":    false,
		"mac":      sharedSecretMAC(secret, nonce.Nonce, username, password, false),
	}
	_, err := c.do(ctx, "register", http.MethodPost, path, nil, req, &login)
	return login, err
}

// sharedSecretMAC is the hex HMAC-SHA1, keyed by the shared secret, of
// nonce NUL username NUL password NUL ("admin" or "notadmin").
func sharedSecretMAC(secret, nonce, username, password string, admin bool) string {
	m := hmac.New(sha1.New, []byte(secret))
	role := "notadmin"
	if admin {
		role = "admin"
	}
	m.Write([]byte(strings.Join([]string{nonce, username, password, role}, "\x00")))
	return hex.EncodeToString(m.Sum(nil))
}

// createRoom creates a room with the given preset ("public_chat" so that
// other users can join it, "private_chat" otherwise).
func (c *client) createRoom(ctx context.Context, preset string) (string, error) {
	var resp struct {
		RoomID string `json:"room_id"`
	}
	_, err := c.do(ctx, "createRoom", http.MethodPost, "/_matrix/client/v3/createRoom", nil,
		map[string]any{"preset": preset, "name": "myelin-bench"}, &resp)
	return resp.RoomID, err
}

func (c *client) join(ctx context.Context, roomID string) error {
	_, err := c.do(ctx, "join", http.MethodPost, "/_matrix/client/v3/join/"+url.PathEscape(roomID), nil, map[string]any{}, nil)
	return err
}

// send sends an m.room.message with a fresh transaction ID.
func (c *client) send(ctx context.Context, roomID string, content any) error {
	txn := fmt.Sprintf("bench-%d-%d", time.Now().UnixNano(), c.txn.Add(1))
	path := "/_matrix/client/v3/rooms/" + url.PathEscape(roomID) + "/send/m.room.message/" + url.PathEscape(txn)
	var resp struct {
		EventID string `json:"event_id"`
	}
	if _, err := c.do(ctx, "send", http.MethodPut, path, nil, content, &resp); err != nil {
		return err
	}
	if resp.EventID == "" {
		return &requestError{Op: "send", Err: errors.New("no event_id in the answer")}
	}
	return nil
}

// uploadFilter stores a filter and returns its ID.
func (c *client) uploadFilter(ctx context.Context, filter map[string]any) (string, error) {
	var resp struct {
		FilterID string `json:"filter_id"`
	}
	path := "/_matrix/client/v3/user/" + url.PathEscape(c.userID) + "/filter"
	_, err := c.do(ctx, "filter", http.MethodPost, path, nil, filter, &resp)
	return resp.FilterID, err
}

// syncResponse is the part of a /sync answer the tool reads.
type syncResponse struct {
	NextBatch string `json:"next_batch"`
	Rooms     struct {
		Join map[string]struct {
			Timeline struct {
				Events []struct {
					Type    string          `json:"type"`
					Content json.RawMessage `json:"content"`
				} `json:"events"`
			} `json:"timeline"`
		} `json:"join"`
	} `json:"rooms"`
}

// sync calls /sync. since and filter may be empty; timeout is the long-poll
// time the server may wait.
func (c *client) sync(ctx context.Context, since, filter string, timeout time.Duration) (*syncResponse, int, error) {
	q := url.Values{"timeout": {fmt.Sprint(timeout.Milliseconds())}}
	if since != "" {
		q.Set("since", since)
	}
	if filter != "" {
		q.Set("filter", filter)
	}
	var resp syncResponse
	n, err := c.do(ctx, "sync", http.MethodGet, "/_matrix/client/v3/sync", q, nil, &resp)
	if err == nil && resp.NextBatch == "" {
		err = &requestError{Op: "sync", Err: errors.New("no next_batch in the answer")}
	}
	return &resp, n, err
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
