package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"time"
)

// sendConn is one sender's own keep-alive HTTP/1.1 connection, used by the
// send scenario's measured phase instead of net/http's client.
//
// Why: the tool shares the machine's cores with the server, and
// net/http's client spent more CPU per request than the request's whole
// round trip needs (two goroutines per connection that each request
// passes through, header maps, the connection pool). Each message is
// still one PUT over a kept-alive TCP connection with the same headers
// and the same JSON body, and its answer is read in full and must be
// 200 with an event_id, so the server sees and answers exactly the
// requests it did before; only the client's own overhead is smaller.
//
// A sendConn belongs to one worker of the loop (closed or open), which
// calls send one message at a time; it is not safe for concurrent use.
type sendConn struct {
	rawConn
}

// newSendConn returns a connection for c, or nil when c's base URL is not
// plain http (https goes through net/http as before).
func newSendConn(c *client) *sendConn {
	rc, ok := newRawConn(c)
	if !ok {
		return nil
	}
	return &sendConn{rc}
}

// send PUTs an m.room.message with a fresh transaction ID, as client.send
// does. A request that fails on a connection the server closed while it
// was idle is retried once on a new connection (as net/http does for a
// request that was not written).
func (s *sendConn) send(ctx context.Context, roomID string, content any) error {
	body, err := json.Marshal(content)
	if err != nil {
		return &requestError{Op: "send", Err: err}
	}
	txn := "bench-" + strconv.FormatInt(time.Now().UnixNano(), 10) + "-" + strconv.FormatInt(s.c.txn.Add(1), 10)
	path := "/_matrix/client/v3/rooms/" + url.PathEscape(roomID) + "/send/m.room.message/" + url.PathEscape(txn)
	s.req = s.req[:0]
	s.req = append(s.req, "PUT "...)
	s.req = append(s.req, path...)
	s.req = append(s.req, " HTTP/1.1\r\nHost: "...)
	s.req = append(s.req, s.host...)
	s.req = append(s.req, "\r\nUser-Agent: myelin-bench\r\nAuthorization: Bearer "...)
	s.req = append(s.req, s.c.token...)
	s.req = append(s.req, "\r\nContent-Type: application/json\r\nContent-Length: "...)
	s.req = strconv.AppendInt(s.req, int64(len(body)), 10)
	s.req = append(s.req, "\r\n\r\n"...)
	s.req = append(s.req, body...)

	data, err := s.do(ctx, "send")
	if err != nil {
		return err
	}
	var resp struct {
		EventID string `json:"event_id"`
	}
	if err := json.Unmarshal(data, &resp); err != nil {
		return &requestError{Op: "send", Err: fmt.Errorf("decoding the answer: %w", err)}
	}
	if resp.EventID == "" {
		return &requestError{Op: "send", Err: errors.New("no event_id in the answer")}
	}
	return nil
}
