package mediaapi

import (
	"context"
	"errors"
	"io"
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
)

// uploadContentType is the Content-Type the client sent, or the spec's
// default. Spec: POST /_matrix/media/v3/upload, "Content-Type" (v1.12:
// optional, defaults to application/octet-stream).
func uploadContentType(r *http.Request) string {
	ct := r.Header.Get("Content-Type")
	if ct == "" {
		return "application/octet-stream"
	}
	if len(ct) > 255 {
		ct = ct[:255]
	}
	return servedContentType(ct)
}

// limitBody caps r's body at max bytes (+1 so an exact-limit file passes
// and the next byte trips), refusing a declared larger Content-Length at
// once. The cap holds for chunked bodies and lying Content-Lengths alike
// because it counts bytes as they are read (security case 26).
func limitBody(w http.ResponseWriter, r *http.Request, max int64) error {
	if r.ContentLength > max {
		return tooLarge(max)
	}
	r.Body = http.MaxBytesReader(w, r.Body, max+1)
	return nil
}

func tooLarge(max int64) error {
	return mxerr.New(mxerr.TooLarge, "upload is larger than the %d byte limit", max)
}

// upload is POST /_matrix/media/v3/upload.
//
// Spec: client-server-api, POST /_matrix/media/v3/upload.
func (s *Server) upload(w http.ResponseWriter, r *http.Request) error {
	max := s.cfg.MaxUploadBytes
	if err := limitBody(w, r, max); err != nil {
		return err
	}
	user := authn.FromContext(r.Context()).UserID
	mxc, err := s.Upload(r.Context(), user, uploadContentType(r), r.URL.Query().Get("filename"), r.Body)
	if err != nil {
		return err
	}
	return httpx.OK(w, map[string]string{"content_uri": mxc})
}

// Upload implements API.
func (s *Server) Upload(ctx context.Context, uploader, contentType, filename string, body io.Reader) (string, error) {
	if err := s.preflightQuota(ctx, uploader); err != nil {
		return "", err
	}
	sha, size, err := s.putBlob(body, s.cfg.MaxUploadBytes)
	if err != nil {
		return "", err
	}
	now := s.now().UnixMilli()
	m := &mediaRow{
		ServerName: s.serverName, MediaID: newMediaID(),
		ContentType: contentType, Filename: cleanFilename(filename),
		Size: size, SHA256: sha, Uploader: uploader, Created: now, Uploaded: now,
	}
	if err := s.store.insertUpload(ctx, m, s.quotaFor(uploader)); err != nil {
		// The file may be shared with other rows; the sweep removes it if
		// nothing references it.
		return "", err
	}
	return "mxc://" + s.serverName + "/" + m.MediaID, nil
}

// quotaFor is the quota of uploader; server-owned media has none.
func (s *Server) quotaFor(uploader string) int64 {
	if uploader == "" {
		return 0
	}
	return s.cfg.UserQuotaBytes
}

// preflightQuota refuses an uploader already at the quota before any byte
// is read. The exact check runs again when the row is written.
func (s *Server) preflightQuota(ctx context.Context, uploader string) error {
	return checkQuota(ctx, s.store.db.Reader(), uploader, 1, s.quotaFor(uploader))
}

// putBlob streams body into the store, mapping the size limit to
// M_TOO_LARGE and a client that went away to a plain error (nothing is
// stored either way).
func (s *Server) putBlob(body io.Reader, limit int64) (string, int64, error) {
	sha, size, err := s.blobs.put(body, limit)
	if errors.Is(err, errTooLarge) {
		return "", 0, tooLarge(limit)
	}
	if err != nil {
		return "", 0, mxerr.Wrap(err, mxerr.Unknown, "could not store the upload").WithStatus(http.StatusBadRequest)
	}
	return sha, size, nil
}

// create is POST /_matrix/media/v1/create.
//
// Spec: client-server-api, POST /_matrix/media/v1/create (the recommended
// expiry of unused IDs is 24 hours; too many pending is 429).
func (s *Server) create(w http.ResponseWriter, r *http.Request) error {
	user := authn.FromContext(r.Context()).UserID
	now := s.now()
	expires := now.Add(s.cfg.UnusedExpiry.D()).UnixMilli()
	m := &mediaRow{ServerName: s.serverName, MediaID: newMediaID(), Uploader: user, Created: now.UnixMilli(), UnusedExpires: expires}
	if err := s.store.reserve(r.Context(), m, s.cfg.MaxPendingUploads, now.UnixMilli()); err != nil {
		return err
	}
	return httpx.OK(w, map[string]any{
		"content_uri":       "mxc://" + s.serverName + "/" + m.MediaID,
		"unused_expires_at": expires,
	})
}

// uploadToMXC is PUT /_matrix/media/v3/upload/{serverName}/{mediaId}.
//
// Spec: client-server-api, PUT /_matrix/media/v3/upload/{serverName}/{mediaId}:
// 403 for another user's ID, 404 for an unknown or expired one,
// 409 M_CANNOT_OVERWRITE_MEDIA once content is there.
func (s *Server) uploadToMXC(w http.ResponseWriter, r *http.Request) error {
	serverName, mediaID := chi.URLParam(r, "serverName"), chi.URLParam(r, "mediaId")
	if err := checkMXC(serverName, mediaID); err != nil {
		return err
	}
	if serverName != s.serverName {
		return mxerr.New(mxerr.NotFound, "unknown media ID")
	}
	user := authn.FromContext(r.Context()).UserID
	ctx := r.Context()
	// Refuse before reading the body when the answer is already known.
	cur, err := s.store.get(ctx, serverName, mediaID)
	if err != nil {
		return err
	}
	if err := checkPendingOwner(cur, user, s.now().UnixMilli()); err != nil {
		return err
	}
	if err := s.preflightQuota(ctx, user); err != nil {
		return err
	}
	if err := limitBody(w, r, s.cfg.MaxUploadBytes); err != nil {
		return err
	}
	sha, size, err := s.putBlob(r.Body, s.cfg.MaxUploadBytes)
	if err != nil {
		return err
	}
	now := s.now()
	m := &mediaRow{
		ServerName: serverName, MediaID: mediaID, ContentType: uploadContentType(r),
		Filename: cleanFilename(r.URL.Query().Get("filename")), Size: size, SHA256: sha,
		Uploader: user, Uploaded: now.UnixMilli(),
	}
	if err := s.store.fillPending(ctx, m, s.quotaFor(user), now.UnixMilli()); err != nil {
		return err
	}
	return httpx.OK(w, httpx.EmptyObject)
}
