package mediaapi

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/internal/mxerr"
)

// mediaRequest is a parsed download or thumbnail request path.
type mediaRequest struct {
	serverName, mediaID string
	// wait is how long to wait for content still being uploaded.
	wait time.Duration
	// allowRemote is false when the caller asked us not to fetch
	// (allow_remote=false, to prevent loops). The legacy endpoints fetch
	// only before the freeze (legacyResolve).
	allowRemote bool
}

// parseMediaRequest validates the path and reads timeout_ms.
//
// Spec: client-server-api, GET /download, "timeout_ms": default 20000;
// "The content repository SHOULD impose a maximum value".
func (s *Server) parseMediaRequest(r *http.Request, serverName string) (*mediaRequest, error) {
	mediaID := chi.URLParam(r, "mediaId")
	if err := checkMXC(serverName, mediaID); err != nil {
		return nil, err
	}
	req := &mediaRequest{serverName: serverName, mediaID: mediaID, wait: 20 * time.Second, allowRemote: true}
	q := r.URL.Query()
	if raw := q.Get("timeout_ms"); raw != "" {
		ms, err := strconv.ParseInt(raw, 10, 64)
		if err != nil || ms < 0 {
			return nil, mxerr.New(mxerr.InvalidParam, "timeout_ms must be a non-negative integer")
		}
		req.wait = time.Duration(ms) * time.Millisecond
	}
	req.wait = min(req.wait, s.cfg.MaxDownloadWait.D())
	if q.Get("allow_remote") == "false" {
		req.allowRemote = false
	}
	return req, nil
}

// pollInterval is how often a download waiting for a pending upload
// looks again (the upload may land on another process in split mode).
const pollInterval = 200 * time.Millisecond

// resolve returns the metadata of ready media: local media (waiting for a
// pending upload up to req.wait), or remote media from the cache or
// fetched into it.
func (s *Server) resolve(ctx context.Context, req *mediaRequest) (*mediaRow, error) {
	if req.serverName != s.serverName {
		return s.resolveRemote(ctx, req)
	}
	deadline := time.Now().Add(req.wait)
	for {
		m, err := s.store.get(ctx, req.serverName, req.mediaID)
		if err != nil {
			return nil, err
		}
		if m == nil || (m.pending() && m.UnusedExpires <= s.now().UnixMilli()) {
			return nil, mxerr.New(mxerr.NotFound, "media not found")
		}
		if !m.pending() {
			return m, nil
		}
		if time.Now().Add(pollInterval).After(deadline) {
			// Spec: GET /download, 504 M_NOT_YET_UPLOADED.
			return nil, mxerr.New(mxerr.NotYetUploaded, "content has not yet been uploaded")
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(pollInterval):
		}
	}
}

// download is GET /_matrix/client/v1/media/download/{serverName}/{mediaId}[/{fileName}].
//
// Spec: client-server-api, "Content repository", GET
// /_matrix/client/v1/media/download/{serverName}/{mediaId}.
func (s *Server) download(w http.ResponseWriter, r *http.Request) error {
	req, err := s.parseMediaRequest(r, chi.URLParam(r, "serverName"))
	if err != nil {
		return err
	}
	key := s.userBudgetKey(r)
	if err := s.budget.take(key, 0); err != nil {
		return err
	}
	m, err := s.resolve(r.Context(), req)
	if err != nil {
		return err
	}
	return s.serveMedia(w, r, m, key)
}

// userBudgetKey is the download budget key of an authenticated request.
func (s *Server) userBudgetKey(r *http.Request) string {
	return "user\x00" + authn.FromContext(r.Context()).UserID
}

// ipBudgetKey is the download budget key of an unauthenticated request:
// the client's IP, believing X-Forwarded-For only from trusted proxies.
func (s *Server) ipBudgetKey(r *http.Request) string {
	return "ip\x00" + s.clientIP.ClientIP(r)
}

// legacyDownload is the deprecated GET /_matrix/media/v3/download/...: it
// serves only media created before the freeze, and fetches remote media
// only while the freeze is still ahead (a fetch after it would make the
// media "new").
//
// Spec: client-server-api, "Client behaviour" (the v1.11 freeze warning)
// and GET /_matrix/media/v3/download: "MAY return 404 M_NOT_FOUND for media
// which exists, but is after the server froze unauthenticated media access".
func (s *Server) legacyDownload(w http.ResponseWriter, r *http.Request) error {
	key := s.ipBudgetKey(r)
	if err := s.budget.take(key, 0); err != nil {
		return err
	}
	m, err := s.legacyResolve(r)
	if err != nil {
		return err
	}
	return s.serveMedia(w, r, m, key)
}

func (s *Server) legacyResolve(r *http.Request) (*mediaRow, error) {
	req, err := s.parseMediaRequest(r, chi.URLParam(r, "serverName"))
	if err != nil {
		return nil, err
	}
	if req.serverName != s.serverName && !s.now().Before(s.freeze) {
		// Past the freeze, remote media fetched now would be new media,
		// which the legacy endpoints do not serve: only the cache is
		// looked at. Before the freeze (a server configured with a future
		// legacy_freeze) a fetch is allowed like on the v1 endpoints,
		// still subject to allow_remote=false.
		m, err := s.store.get(r.Context(), req.serverName, req.mediaID)
		if err != nil {
			return nil, err
		}
		if m == nil || !s.beforeFreeze(m) {
			return nil, mxerr.New(mxerr.NotFound, "media not found")
		}
		return m, nil
	}
	m, err := s.resolve(r.Context(), req)
	if err != nil {
		return nil, err
	}
	if !s.beforeFreeze(m) {
		return nil, mxerr.New(mxerr.NotFound, "media not found (this media is only served by the authenticated /_matrix/client/v1/media endpoints)")
	}
	return m, nil
}

func (s *Server) beforeFreeze(m *mediaRow) bool { return m.Created < s.freeze.UnixMilli() }

// setSafeHeaders sets the headers every served file carries.
//
// Spec: client-server-api, "Content repository": the recommended
// Content-Security-Policy and (v1.4) Cross-Origin-Resource-Policy.
func setSafeHeaders(h http.Header) {
	h.Set("Content-Security-Policy", "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; media-src 'self'; object-src 'self';")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cross-Origin-Resource-Policy", "cross-origin")
	h.Set("Cache-Control", "private, max-age=86400, immutable")
}

// serveMedia writes the file with its content type, a disposition that is
// inline only for the spec's allow-list, and the uploaded (or requested)
// file name.
//
// Spec: client-server-api, GET /download "Content-Disposition" and
// "Serving inline content".
//
// The bytes it will send are charged to budgetKey's download budget
// first; past the budget it sends nothing but 429 M_LIMIT_EXCEEDED.
func (s *Server) serveMedia(w http.ResponseWriter, r *http.Request, m *mediaRow, budgetKey string) error {
	if err := s.budget.take(budgetKey, servedBytes(r, m.Size)); err != nil {
		return err
	}
	f, err := s.blobs.open(m.SHA256)
	if err != nil {
		return err
	}
	defer f.Close()
	contentType := servedContentType(m.ContentType)
	disposition := "attachment"
	if isInline(contentType) {
		disposition = "inline"
	}
	filename := m.Filename
	if override := chi.URLParam(r, "fileName"); override != "" {
		filename = override
	}
	h := w.Header()
	setSafeHeaders(h)
	h.Set("Content-Type", contentType)
	h.Set("Content-Disposition", contentDisposition(disposition, filename))
	// ServeContent adds ranges and conditional requests; Content-Type is
	// already set, so it does not sniff.
	http.ServeContent(w, r, "", time.UnixMilli(m.Uploaded), f)
	return nil
}

func timeMillis(ms int64) time.Time { return time.UnixMilli(ms) }
