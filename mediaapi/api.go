package mediaapi

import (
	"context"
	"io"
	"net/http"
	"time"
)

// API is what other components may ask of the media repository.
type API interface {
	// Upload stores content as new local media owned by uploader (a user
	// ID; "" for media the server itself owns) and returns its mxc:// URI.
	// It enforces max_upload_bytes and the uploader's quota.
	Upload(ctx context.Context, uploader, contentType, filename string, body io.Reader) (mxc string, err error)
}

var _ API = (*Server)(nil)

// RemoteFetcher downloads media from the server that owns it. It is the
// seam between the media cache and federation transport.
type RemoteFetcher interface {
	// Fetch starts downloading mediaID from serverName. maxBytes is the
	// largest file the caller will accept; a fetcher should refuse a
	// declared larger size early (M_TOO_LARGE) but the caller enforces it
	// while reading too. A missing file is *mxerr.Error M_NOT_FOUND.
	Fetch(ctx context.Context, serverName, mediaID string, maxBytes int64) (*RemoteFile, error)
}

// RemoteFile is a remote server's answer. The caller closes Body.
type RemoteFile struct {
	ContentType string
	// Filename is the remote server's Content-Disposition filename, or "".
	Filename string
	Body     io.ReadCloser
}

// OriginAuthenticator checks a federation request's authentication
// (X-Matrix) and returns the requesting server's name. federationapi
// provides it.
type OriginAuthenticator func(r *http.Request) (origin string, err error)

// Resolver maps a server name to the base URL its federation API is
// served at (scheme://host:port, no path). Server discovery
// (.well-known, SRV) belongs to federationapi; until it provides one, the
// media repository uses defaultResolver.
type Resolver func(ctx context.Context, serverName string) (baseURL string, err error)

// clock lets tests move time.
type clock func() time.Time
