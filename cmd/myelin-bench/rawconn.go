package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"
)

// rawConn is one worker's own keep-alive HTTP/1.1 connection to the server
// under test, shared by sendConn (the senders' PUTs) and syncConn (the
// fan-out listeners' long polls): the caller writes a whole request into
// req, and do sends it and reads the whole answer. Why the tool does not
// use net/http's client there is said at sendConn and syncConn.
//
// A rawConn belongs to one goroutine; it is not safe for concurrent use.
type rawConn struct {
	c    *client
	addr string // host:port to dial
	host string // the Host header
	conn net.Conn
	respReader

	// ctx is the context the connection is bound to: when it ends, the
	// connection's deadline is moved to the past so that a waiting read
	// returns (close undoes that binding).
	ctx  context.Context
	stop func() bool

	dials *atomic.Int64 // when not nil, counts the connections dialled

	req []byte // request buffer, reused
}

// respReader reads HTTP/1.1 answers from a connection. body holds the last
// answer's body, valid until the next read.
type respReader struct {
	br   *bufio.Reader
	body []byte // answer buffer, reused
	line []byte // a header line longer than br's buffer
}

// newRawConn returns a connection for c; false when c's base URL is not
// plain http (https goes through net/http).
func newRawConn(c *client) (rawConn, bool) {
	u, err := url.Parse(c.base)
	if err != nil || u.Scheme != "http" || u.Path != "" && u.Path != "/" {
		return rawConn{}, false
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "80")
	}
	return rawConn{c: c, addr: addr, host: u.Host}, true
}

// errConnReused marks a failure on a kept-alive connection before any
// byte of the answer arrived: the server may have closed it while idle.
var errConnReused = errors.New("kept-alive connection failed")

// do sends req and returns the body of a 200 answer. A request that fails
// on a connection the server closed while it was idle is retried once on
// a new connection (as net/http does for a request that was not
// written). Any other failure, and an answer other than 200, is a
// *requestError for op; on a non-200 answer its body is returned too.
func (s *rawConn) do(ctx context.Context, op string) ([]byte, error) {
	reused := s.conn != nil
	status, data, err := s.roundTrip(ctx)
	if err != nil && reused && ctx.Err() == nil && errors.Is(err, errConnReused) {
		status, data, err = s.roundTrip(ctx)
	}
	if err != nil {
		return data, &requestError{Op: op, Err: err}
	}
	if status != http.StatusOK {
		var mErr struct {
			Errcode string `json:"errcode"`
			Error   string `json:"error"`
		}
		_ = json.Unmarshal(data, &mErr)
		return data, &requestError{Op: op, Status: status, Errcode: mErr.Errcode, Msg: mErr.Error, Body: bytes.Clone(data)}
	}
	return data, nil
}

// bind ties the connection to ctx: its deadline, and a move of the
// deadline to the past when ctx ends (which unblocks a waiting read).
func (s *rawConn) bind(ctx context.Context) {
	if s.ctx == ctx {
		return
	}
	if s.stop != nil {
		s.stop()
	}
	conn := s.conn
	_ = conn.SetDeadline(time.Time{})
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	s.ctx = ctx
	s.stop = context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
}

// roundTrip writes s.req and reads the whole answer into s.body. Any
// failure closes the connection; the next request dials a new one.
func (s *rawConn) roundTrip(ctx context.Context) (status int, data []byte, err error) {
	if err := ctx.Err(); err != nil {
		return 0, nil, err
	}
	reused := s.conn != nil
	if s.conn == nil {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", s.addr)
		if err != nil {
			return 0, nil, err
		}
		s.conn, s.br = conn, bufio.NewReaderSize(conn, 4096)
		if s.dials != nil {
			s.dials.Add(1)
		}
	}
	s.bind(ctx)
	fail := func(err error) (int, []byte, error) {
		s.close()
		if ctxErr := ctx.Err(); ctxErr != nil {
			err = fmt.Errorf("%w (%w)", ctxErr, err)
		}
		return 0, nil, err
	}
	if _, err := s.conn.Write(s.req); err != nil {
		if reused {
			err = fmt.Errorf("%w: %w", errConnReused, err)
		}
		return fail(err)
	}
	if reused {
		if _, err := s.br.Peek(1); err != nil {
			return fail(fmt.Errorf("%w: %w", errConnReused, err))
		}
	}
	status, closeAfter, err := s.readResponse()
	if err != nil {
		return fail(err)
	}
	if closeAfter {
		s.close()
	}
	return status, s.body, nil
}

// close closes the connection, if open, and undoes its binding to a
// context.
func (s *rawConn) close() {
	if s.stop != nil {
		s.stop()
		s.stop, s.ctx = nil, nil
	}
	if s.conn != nil {
		s.conn.Close()
		s.conn, s.br = nil, nil
	}
}
