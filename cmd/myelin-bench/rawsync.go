package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// syncConn is one fan-out listener's own keep-alive HTTP/1.1 connection for
// its long polls of /sync, used in the measured phase instead of net/http's
// client (as sendConn is for the senders).
//
// Why: the tool runs on the cores of the server it measures, and at 200
// listeners net/http's client cost about 0.1 ms of CPU per /sync response
// (two goroutines per connection that every request and answer pass
// through, header maps, the connection pool, a context watcher per
// request). The server sees the same request as before — the same method,
// path, query (in url.Values' order), Authorization and Accept-Encoding —
// over one kept-alive TCP connection per listener; each answer is read in
// full (Content-Length, chunked, or up to the close; gzip decoded) before
// the listener takes the time, and is decoded as before.
//
// A syncConn belongs to one listener goroutine; it is not safe for
// concurrent use.
type syncConn struct {
	rawConn
}

// newSyncConn returns a connection for c, or nil when c's base URL is not
// plain http (https goes through net/http as before).
func newSyncConn(c *client) *syncConn {
	rc, ok := newRawConn(c)
	if !ok {
		return nil
	}
	return &syncConn{rc}
}

// maxSyncBody bounds an answer held in memory.
const maxSyncBody = 64 << 20

// sync calls /sync as client.sync does and decodes the answer into resp
// (reset first). It returns the size of the answer's body.
func (s *syncConn) sync(ctx context.Context, since, filter string, timeout time.Duration, resp *syncResponse) (int, error) {
	*resp = syncResponse{}
	// The query as url.Values.Encode writes it: keys sorted.
	s.req = s.req[:0]
	s.req = append(s.req, "GET /_matrix/client/v3/sync?"...)
	if filter != "" {
		s.req = append(s.req, "filter="...)
		s.req = append(s.req, url.QueryEscape(filter)...)
		s.req = append(s.req, '&')
	}
	if since != "" {
		s.req = append(s.req, "since="...)
		s.req = append(s.req, url.QueryEscape(since)...)
		s.req = append(s.req, '&')
	}
	s.req = append(s.req, "timeout="...)
	s.req = strconv.AppendInt(s.req, timeout.Milliseconds(), 10)
	s.req = append(s.req, " HTTP/1.1\r\nHost: "...)
	s.req = append(s.req, s.host...)
	s.req = append(s.req, "\r\nUser-Agent: myelin-bench\r\nAuthorization: Bearer "...)
	s.req = append(s.req, s.c.token...)
	// net/http's client asks for gzip too; a server that compresses
	// still does.
	s.req = append(s.req, "\r\nAccept-Encoding: gzip\r\n\r\n"...)

	data, err := s.do(ctx, "sync")
	if err != nil {
		return len(data), err
	}
	if err := json.Unmarshal(data, resp); err != nil {
		return len(data), &requestError{Op: "sync", Err: fmt.Errorf("decoding the answer: %w", err)}
	}
	if resp.NextBatch == "" {
		return len(data), &requestError{Op: "sync", Err: errors.New("no next_batch in the answer")}
	}
	return len(data), nil
}

// readResponse reads one HTTP/1.1 answer (RFC 9112): the status line, the
// header fields it needs, and the whole body into s.body. closeAfter says
// the server ends the connection after it.
func (s *respReader) readResponse() (status int, closeAfter bool, err error) {
	for {
		line, err := s.readLine()
		if err != nil {
			return 0, false, err
		}
		// HTTP/1.x SP 3DIGIT SP reason
		if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' || (len(line) > 12 && line[12] != ' ') {
			return 0, false, fmt.Errorf("malformed status line %q", line)
		}
		http10 := line[7] == '0'
		status, err = strconv.Atoi(string(line[9:12]))
		if err != nil || status < 100 {
			return 0, false, fmt.Errorf("malformed status line %q", line)
		}
		length, chunked, gz := int64(-1), false, false
		closeAfter = http10
		for {
			line, err := s.readLine()
			if err != nil {
				return 0, false, err
			}
			if len(line) == 0 {
				break
			}
			name, value, ok := bytes.Cut(line, []byte(":"))
			if !ok {
				return 0, false, fmt.Errorf("malformed header line %q", line)
			}
			value = bytes.TrimSpace(value)
			switch {
			case bytes.EqualFold(name, []byte("Content-Length")):
				n, err := strconv.ParseInt(string(value), 10, 64)
				if err != nil || n < 0 || (length >= 0 && n != length) {
					return 0, false, fmt.Errorf("bad Content-Length %q", value)
				}
				length = n
			case bytes.EqualFold(name, []byte("Transfer-Encoding")):
				if !bytes.EqualFold(value, []byte("chunked")) {
					return 0, false, fmt.Errorf("unsupported Transfer-Encoding %q", value)
				}
				chunked = true
			case bytes.EqualFold(name, []byte("Connection")):
				if bytes.EqualFold(value, []byte("close")) {
					closeAfter = true
				} else if http10 && bytes.EqualFold(value, []byte("keep-alive")) {
					closeAfter = false
				}
			case bytes.EqualFold(name, []byte("Content-Encoding")):
				switch {
				case bytes.EqualFold(value, []byte("gzip")):
					gz = true
				case len(value) > 0 && !bytes.EqualFold(value, []byte("identity")):
					return 0, false, fmt.Errorf("unsupported Content-Encoding %q", value)
				}
			}
		}
		if status >= 100 && status < 200 && status != http.StatusSwitchingProtocols {
			continue // an interim answer; the final one follows
		}
		s.body = s.body[:0]
		switch {
		case status < 200 || status == http.StatusNoContent || status == http.StatusNotModified:
			// no body
		case chunked:
			// Transfer-Encoding overrides Content-Length (RFC 9112, 6.3).
			err = s.readChunked()
		case length >= 0:
			if length > maxSyncBody {
				return 0, false, fmt.Errorf("answer of %d bytes", length)
			}
			s.body = grow(s.body, int(length))
			_, err = io.ReadFull(s.br, s.body)
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
		default:
			// No length: the body runs to the end of the connection.
			closeAfter = true
			err = s.readToEOF()
		}
		if err != nil {
			return 0, false, err
		}
		if gz && len(s.body) > 0 {
			zr, err := gzip.NewReader(bytes.NewReader(s.body))
			if err != nil {
				return 0, false, fmt.Errorf("gzip: %w", err)
			}
			plain, err := io.ReadAll(io.LimitReader(zr, maxSyncBody+1))
			if err != nil {
				return 0, false, fmt.Errorf("gzip: %w", err)
			}
			if len(plain) > maxSyncBody {
				return 0, false, errors.New("answer too large")
			}
			s.body = plain
		}
		return status, closeAfter, nil
	}
}

// readChunked reads a chunked body (RFC 9112, 7.1) into s.body, and the
// trailer section after it.
func (s *respReader) readChunked() error {
	for {
		line, err := s.readLine()
		if err != nil {
			return err
		}
		if i := bytes.IndexByte(line, ';'); i >= 0 {
			line = line[:i] // chunk extensions
		}
		size, err := strconv.ParseUint(string(bytes.TrimSpace(line)), 16, 63)
		if err != nil {
			return fmt.Errorf("bad chunk size %q", line)
		}
		if size == 0 {
			for { // trailer fields, up to the empty line
				line, err := s.readLine()
				if err != nil {
					return err
				}
				if len(line) == 0 {
					return nil
				}
			}
		}
		if uint64(len(s.body))+size > maxSyncBody {
			return errors.New("answer too large")
		}
		n := len(s.body)
		s.body = grow(s.body, n+int(size))
		if _, err := io.ReadFull(s.br, s.body[n:]); err != nil {
			return io.ErrUnexpectedEOF
		}
		crlf, err := s.readLine()
		if err != nil {
			return err
		}
		if len(crlf) != 0 {
			return errors.New("no CRLF after a chunk")
		}
	}
}

// readToEOF reads the rest of the connection into s.body.
func (s *respReader) readToEOF() error {
	buf := bytes.NewBuffer(s.body)
	_, err := buf.ReadFrom(io.LimitReader(s.br, maxSyncBody+1))
	s.body = buf.Bytes()
	if err == nil && len(s.body) > maxSyncBody {
		err = errors.New("answer too large")
	}
	return err
}

// grow returns b resized to n bytes, keeping its contents.
func grow(b []byte, n int) []byte {
	if n <= cap(b) {
		return b[:n]
	}
	nb := make([]byte, n, max(n, 2*cap(b)))
	copy(nb, b)
	return nb
}

// readLine returns the next line without its CRLF (or bare LF). The slice
// is valid until the next read.
func (s *respReader) readLine() ([]byte, error) {
	line, err := s.br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		s.line = append(s.line[:0], line...)
		for errors.Is(err, bufio.ErrBufferFull) {
			if len(s.line) > 1<<20 {
				return nil, errors.New("header line too long")
			}
			line, err = s.br.ReadSlice('\n')
			s.line = append(s.line, line...)
		}
		line = s.line
	}
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}
