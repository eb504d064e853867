package mediaapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/mxerr"
)

// resolveRemote returns cached remote media, fetching it first if needed.
// Concurrent requests for the same file share one fetch.
//
// Spec: client-server-api, "Content repository" (content is downloaded
// from the recipient's homeserver, which first transfers it from the
// origin) and "Security considerations" (remote files too large: 502
// M_TOO_LARGE; restrict the number and size of cached remote files).
func (s *Server) resolveRemote(ctx context.Context, req *mediaRequest) (*mediaRow, error) {
	m, err := s.store.get(ctx, req.serverName, req.mediaID)
	if err != nil {
		return nil, err
	}
	if m != nil && !m.pending() {
		if err := s.store.touchRemote(ctx, m.ServerName, m.MediaID, s.now().UnixMilli(), s.accessResolution()); err != nil {
			s.log.Warn("noting remote media access", "err", err)
		}
		return m, nil
	}
	if !req.allowRemote {
		return nil, mxerr.New(mxerr.NotFound, "remote media not cached and allow_remote is false")
	}
	key := "remote\x00" + req.serverName + "\x00" + req.mediaID
	v, err, _ := s.flights.Do(key, func() (any, error) {
		// Detached from the first caller's context, so its going away
		// does not fail everyone sharing the fetch.
		fetchCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.RemoteFetchTimeout.D())
		defer cancel()
		return s.fetchRemote(fetchCtx, req.serverName, req.mediaID)
	})
	if err != nil {
		return nil, err
	}
	return v.(*mediaRow), nil
}

func (s *Server) fetchRemote(ctx context.Context, serverName, mediaID string) (*mediaRow, error) {
	limit := s.cfg.RemoteMaxBytes
	file, err := s.remote.Fetch(ctx, serverName, mediaID, limit)
	if err != nil {
		return nil, err
	}
	defer file.Body.Close()
	sha, size, err := s.blobs.put(file.Body, limit)
	if err == errTooLarge {
		return nil, mxerr.New(mxerr.TooLarge, "remote content is too large to serve").WithStatus(http.StatusBadGateway)
	}
	if err != nil {
		return nil, mxerr.Wrap(err, mxerr.Unknown, "fetching remote media failed").WithStatus(http.StatusBadGateway)
	}
	now := s.now().UnixMilli()
	m := &mediaRow{
		ServerName: serverName, MediaID: mediaID, ContentType: servedContentType(file.ContentType),
		Filename: file.Filename, Size: size, SHA256: sha, Created: now, Uploaded: now,
	}
	if err := s.store.insertRemote(ctx, m); err != nil {
		return nil, err
	}
	if err := s.enforceRemoteCap(ctx, serverName, mediaID); err != nil {
		s.log.Warn("evicting remote media over remote_cache_max_bytes", "err", err)
	}
	return m, nil
}

// accessResolution is how stale a cached remote file's last access time
// may be. Expiry (remote_cache_ttl) needs it to the hour; least recently
// used eviction (remote_cache_max_bytes) to the second, at the cost of a
// write per download of each file at most once a second.
func (s *Server) accessResolution() time.Duration {
	if s.cfg.RemoteCacheMaxBytes > 0 {
		return time.Second
	}
	return time.Hour
}

// staticResolver resolves the names in media_api.remote_base_urls to
// their URLs and every other name by the spec's rules for names with an
// IP literal or explicit port, else port 8448. It does not look up
// .well-known or SRV records: full server discovery is federationapi's.
//
// Spec: server-server-api, "Resolving server names", steps 1, 2 and the
// final fallback to port 8448.
func staticResolver(entries []string, discover Resolver) (Resolver, error) {
	static := map[string]string{}
	for _, e := range entries {
		name, u, err := config.ParseRemoteBaseURL(e)
		if err != nil {
			return nil, err
		}
		static[name] = strings.TrimRight(u.String(), "/")
	}
	return func(ctx context.Context, serverName string) (string, error) {
		if base, ok := static[serverName]; ok {
			return base, nil
		}
		if discover != nil {
			return discover(ctx, serverName)
		}
		if !validServerName(serverName) {
			return "", fmt.Errorf("invalid server name %q", serverName)
		}
		host := serverName
		if _, _, err := net.SplitHostPort(serverName); err != nil {
			host = net.JoinHostPort(strings.Trim(serverName, "[]"), "8448")
		}
		return "https://" + host, nil
	}, nil
}

// httpFetcher fetches remote media over HTTP: the federation endpoint
// first, then the deprecated client endpoint with allow_remote=false.
//
// Spec: server-server-api, "Content Repository": servers MUST try
// /_matrix/federation/v1/media/download first, fall back to
// /_matrix/media/* on 404 M_UNRECOGNIZED, and set allow_remote=false
// when falling back.
type httpFetcher struct {
	client  *http.Client // guarded: connects only to allowed addresses
	policy  *ipPolicy    // the client's; also checks IP literals in URLs
	resolve Resolver
	// sign, if non-nil, adds the X-Matrix Authorization header to a
	// federation request for destination. Without it the request is sent
	// unsigned and servers that check (all conforming ones) refuse it.
	sign func(r *http.Request, destination string) error
}

// maxMetadataBytes bounds the JSON part of a multipart media response.
const maxMetadataBytes = 64 << 10

func (f *httpFetcher) Fetch(ctx context.Context, serverName, mediaID string, maxBytes int64) (*RemoteFile, error) {
	base, err := f.resolve(ctx, serverName)
	if err != nil {
		return nil, mxerr.Wrap(err, mxerr.NotFound, "cannot reach the media's server").WithStatus(http.StatusBadGateway)
	}
	fedURL := base + "/_matrix/federation/v1/media/download/" + url.PathEscape(mediaID) + "?timeout_ms=20000"
	resp, err := f.get(ctx, fedURL, serverName, true)
	if err != nil {
		return nil, err
	}
	if unknownEndpoint(resp) {
		resp.Body.Close()
		legacyURL := base + "/_matrix/media/v3/download/" + url.PathEscape(serverName) + "/" + url.PathEscape(mediaID) + "?allow_remote=false&timeout_ms=20000"
		if resp, err = f.get(ctx, legacyURL, serverName, false); err != nil {
			return nil, err
		}
		if err := remoteStatus(resp, maxBytes); err != nil {
			return nil, err
		}
		return &RemoteFile{ContentType: resp.Header.Get("Content-Type"),
			Filename: filenameFromDisposition(resp.Header.Get("Content-Disposition")), Body: resp.Body}, nil
	}
	if err := remoteStatus(resp, maxBytes); err != nil {
		return nil, err
	}
	file, err := f.readMultipart(ctx, resp, maxBytes)
	if err != nil {
		resp.Body.Close()
		return nil, err
	}
	return file, nil
}

func (f *httpFetcher) get(ctx context.Context, rawURL, destination string, federation bool) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, err
	}
	if err := f.policy.checkLiteral(req.URL.Hostname()); err != nil {
		return nil, mxerr.Wrap(err, mxerr.Forbidden, "fetching media from this address is not allowed").WithStatus(http.StatusBadGateway)
	}
	if federation && f.sign != nil {
		if err := f.sign(req, destination); err != nil {
			return nil, err
		}
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return nil, mxerr.Wrap(err, mxerr.Unknown, "could not fetch remote media").WithStatus(http.StatusBadGateway)
	}
	return resp, nil
}

// unknownEndpoint says whether a non-200 answer to the federation media
// endpoint means the remote server does not have it, so the deprecated
// endpoint is tried (reading the body of such an answer).
//
// Spec: server-server-api, "Content Repository" names 404 M_UNRECOGNIZED,
// the answer for unknown endpoints ("Unsupported endpoints"). Servers
// written before that rule answer an unknown endpoint with 400 or 405
// M_UNRECOGNIZED, or with a 400/404 whose body is not a Matrix error at
// all (no errcode: a plain router answer); those are treated the same. A
// Matrix error with any other errcode (M_NOT_FOUND, M_TOO_LARGE, …) is the
// server's answer about the media and is not retried elsewhere.
func unknownEndpoint(resp *http.Response) bool {
	switch resp.StatusCode {
	case http.StatusNotFound, http.StatusBadRequest, http.StatusMethodNotAllowed:
	default:
		return false
	}
	// Keep the (small) error body for remoteStatus, which reads it again.
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxMetadataBytes))
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	var matrixErr struct {
		Errcode string `json:"errcode"`
	}
	_ = json.Unmarshal(body, &matrixErr)
	code := matrixErr.Errcode
	if code == string(mxerr.Unrecognized) {
		return true
	}
	return code == "" && resp.StatusCode != http.StatusMethodNotAllowed
}

// errcodeOf reads the errcode of a (small) JSON error body, leaving the
// body unusable.
func errcodeOf(resp *http.Response) string {
	var body struct {
		Errcode string `json:"errcode"`
	}
	_ = json.NewDecoder(io.LimitReader(resp.Body, maxMetadataBytes)).Decode(&body)
	return body.Errcode
}

// remoteStatus maps a non-200 answer to our error (closing its body) and
// refuses a declared size over maxBytes.
func remoteStatus(resp *http.Response, maxBytes int64) error {
	if resp.StatusCode == http.StatusOK {
		if resp.ContentLength > maxBytes {
			resp.Body.Close()
			return mxerr.New(mxerr.TooLarge, "remote content is too large to serve").WithStatus(http.StatusBadGateway)
		}
		return nil
	}
	defer resp.Body.Close()
	code := errcodeOf(resp)
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return mxerr.New(mxerr.NotFound, "remote media not found")
	case code == string(mxerr.NotYetUploaded):
		return mxerr.New(mxerr.NotYetUploaded, "remote content has not yet been uploaded")
	case code == string(mxerr.TooLarge):
		return mxerr.New(mxerr.TooLarge, "remote content is too large to serve").WithStatus(http.StatusBadGateway)
	}
	return mxerr.New(mxerr.Unknown, "remote server answered %d", resp.StatusCode).WithStatus(http.StatusBadGateway)
}

// readMultipart reads the federation download's multipart/mixed answer:
// a JSON metadata part, then the content or a Location redirect.
//
// Spec: server-server-api, GET /_matrix/federation/v1/media/download.
func (f *httpFetcher) readMultipart(ctx context.Context, resp *http.Response, maxBytes int64) (*RemoteFile, error) {
	mediaType, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || mediaType != "multipart/mixed" || params["boundary"] == "" {
		return nil, mxerr.New(mxerr.Unknown, "remote server sent a download that is not multipart/mixed").WithStatus(http.StatusBadGateway)
	}
	mr := multipart.NewReader(resp.Body, params["boundary"])
	meta, err := mr.NextPart()
	if err != nil {
		return nil, mxerr.Wrap(err, mxerr.Unknown, "remote download has no metadata part").WithStatus(http.StatusBadGateway)
	}
	var metadata map[string]any
	if err := json.NewDecoder(io.LimitReader(meta, maxMetadataBytes)).Decode(&metadata); err != nil {
		return nil, mxerr.Wrap(err, mxerr.Unknown, "remote download metadata is not a JSON object").WithStatus(http.StatusBadGateway)
	}
	content, err := mr.NextPart()
	if err != nil {
		return nil, mxerr.Wrap(err, mxerr.Unknown, "remote download has no content part").WithStatus(http.StatusBadGateway)
	}
	if loc := content.Header.Get("Location"); loc != "" {
		// A redirect (e.g. to a CDN): fetch it now, never cache the URL.
		target, err := resp.Request.URL.Parse(loc)
		if err != nil || (target.Scheme != "https" && target.Scheme != "http") {
			return nil, mxerr.New(mxerr.Unknown, "remote download redirects to an unusable URL").WithStatus(http.StatusBadGateway)
		}
		resp.Body.Close()
		redirected, err := f.get(ctx, target.String(), "", false)
		if err != nil {
			return nil, err
		}
		if err := remoteStatus(redirected, maxBytes); err != nil {
			return nil, err
		}
		return &RemoteFile{ContentType: redirected.Header.Get("Content-Type"),
			Filename: filenameFromDisposition(redirected.Header.Get("Content-Disposition")), Body: redirected.Body}, nil
	}
	return &RemoteFile{
		ContentType: content.Header.Get("Content-Type"),
		Filename:    filenameFromDisposition(content.Header.Get("Content-Disposition")),
		Body:        partBody{Reader: content, closer: resp.Body},
	}, nil
}

// partBody reads one multipart part and closes the whole response.
type partBody struct {
	io.Reader
	closer io.Closer
}

func (p partBody) Close() error { return p.closer.Close() }
