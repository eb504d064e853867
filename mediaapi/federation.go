package mediaapi

import (
	"io"
	"mime/multipart"
	"net/http"
	"net/textproto"

	"github.com/myelin-chat/myelin/internal/httpx"
)

// federationDownload is GET /_matrix/federation/v1/media/download/{mediaId}.
//
// Spec: server-server-api, "Content Repository": a multipart/mixed body of
// exactly two parts, JSON metadata (currently {}) then the content with
// its Content-Type and Content-Disposition.
func (s *Server) federationDownload(w http.ResponseWriter, r *http.Request) error {
	req, err := s.parseMediaRequest(r, s.serverName)
	if err != nil {
		return err
	}
	m, err := s.resolve(r.Context(), req)
	if err != nil {
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
	return writeMultipartMedia(w, contentType, contentDisposition(disposition, m.Filename), f)
}

// federationThumbnail is GET /_matrix/federation/v1/media/thumbnail/{mediaId}.
//
// Spec: server-server-api, GET /_matrix/federation/v1/media/thumbnail.
func (s *Server) federationThumbnail(w http.ResponseWriter, r *http.Request) error {
	req, err := s.parseMediaRequest(r, s.serverName)
	if err != nil {
		return err
	}
	tr, err := parseThumbRequest(r)
	if err != nil {
		return err
	}
	m, err := s.resolve(r.Context(), req)
	if err != nil {
		return err
	}
	t, err := s.thumbnailFor(r.Context(), m, tr)
	if err != nil {
		return err
	}
	f, err := s.blobs.open(t.sha)
	if err != nil {
		return err
	}
	defer f.Close()
	return writeMultipartMedia(w, t.contentType, contentDisposition("inline", "thumbnail."+extension(t.contentType)), f)
}

// writeMultipartMedia writes the two-part federation media answer.
func writeMultipartMedia(w http.ResponseWriter, contentType, disposition string, content io.Reader) error {
	mw := multipart.NewWriter(w)
	w.Header().Set("Content-Type", "multipart/mixed; boundary="+mw.Boundary())
	w.WriteHeader(http.StatusOK)
	meta, err := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"application/json"}})
	if err != nil {
		return nil // the client went away; the status is already sent
	}
	if _, err := meta.Write([]byte("{}")); err != nil {
		return nil
	}
	part, err := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {contentType}, "Content-Disposition": {disposition}})
	if err != nil {
		return nil
	}
	if _, err := io.Copy(part, content); err != nil {
		return nil
	}
	_ = mw.Close()
	return nil
}

// config is GET /_matrix/client/v1/media/config (and the deprecated
// /_matrix/media/v3/config).
//
// Spec: client-server-api, GET /_matrix/client/v1/media/config.
func (s *Server) config(w http.ResponseWriter, r *http.Request) error {
	return httpx.OK(w, map[string]any{"m.upload.size": s.cfg.MaxUploadBytes})
}
