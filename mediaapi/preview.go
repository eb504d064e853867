package mediaapi

import (
	"context"
	"encoding/json"
	"errors"
	"image"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"

	"golang.org/x/net/html/charset"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
)

// maxPreviewURLLength bounds the url parameter.
const maxPreviewURLLength = 2048

// previewURL is GET /_matrix/client/v1/media/preview_url (and the
// deprecated /_matrix/media/v3/preview_url).
//
// Spec: client-server-api, GET /_matrix/client/v1/media/preview_url. The
// `ts` parameter is a preference the server may ignore ("The server may
// return a newer version"): a cached preview younger than
// url_preview_cache_ttl is returned, else the page is fetched now.
func (s *Server) previewURL(w http.ResponseWriter, r *http.Request) error {
	if !s.cfg.URLPreviews {
		return mxerr.New(mxerr.Forbidden, "URL previews are disabled on this server")
	}
	raw := r.URL.Query().Get("url")
	target, err := url.Parse(raw)
	if raw == "" || len(raw) > maxPreviewURLLength || err != nil ||
		(target.Scheme != "http" && target.Scheme != "https") || target.Host == "" {
		return mxerr.New(mxerr.InvalidParam, "url must be an absolute http or https URL")
	}
	target.Fragment = ""
	key := target.String()
	ctx := r.Context()
	notBefore := s.now().Add(-s.cfg.URLPreviewCacheTTL.D()).UnixMilli()
	if cached, err := s.store.getPreview(ctx, key, notBefore); err != nil {
		return err
	} else if cached != "" {
		return writeRawJSON(w, cached)
	}
	v, err, _ := s.flights.Do("preview\x00"+key, func() (any, error) {
		fetchCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.URLPreviewTimeout.D())
		defer cancel()
		og, err := s.fetchPreview(fetchCtx, target)
		if err != nil {
			return nil, err
		}
		body, err := json.Marshal(og)
		if err != nil {
			return nil, err
		}
		if err := s.store.putPreview(fetchCtx, key, string(body), s.now().UnixMilli()); err != nil {
			return nil, err
		}
		return string(body), nil
	})
	if err != nil {
		return err
	}
	return writeRawJSON(w, v.(string))
}

func writeRawJSON(w http.ResponseWriter, body string) error {
	w.Header().Set("Content-Type", "application/json")
	_, err := io.WriteString(w, body)
	return err
}

// fetch GETs u through the guarded client, mapping a refused address to
// 403 and other failures to 502.
func (s *Server) fetch(ctx context.Context, u *url.URL, accept string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, mxerr.Wrap(err, mxerr.InvalidParam, "invalid URL")
	}
	if err := s.outbound.checkLiteral(u.Hostname()); err != nil {
		return nil, mxerr.Wrap(err, mxerr.Forbidden, "URL previews of this address are not allowed")
	}
	req.Header.Set("Accept", accept)
	req.Header.Set("User-Agent", "Myelin URL preview (Matrix homeserver)")
	resp, err := s.previewClient.Do(req)
	if err != nil {
		if isForbiddenAddress(err) {
			return nil, mxerr.Wrap(err, mxerr.Forbidden, "URL previews of this address are not allowed")
		}
		return nil, mxerr.Wrap(err, mxerr.Unknown, "could not fetch the URL").WithStatus(http.StatusBadGateway)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, mxerr.New(mxerr.Unknown, "the URL answered %d", resp.StatusCode).WithStatus(http.StatusBadGateway)
	}
	return resp, nil
}

// fetchPreview fetches target and builds its OpenGraph answer: from HTML,
// or for an image URL, the image itself.
func (s *Server) fetchPreview(ctx context.Context, target *url.URL) (map[string]any, error) {
	resp, err := s.fetch(ctx, target, "text/html,application/xhtml+xml,image/*;q=0.9,*/*;q=0.1")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	contentType := resp.Header.Get("Content-Type")
	mediaType, _, _ := mime.ParseMediaType(contentType)
	og := map[string]any{}
	switch {
	case strings.HasPrefix(mediaType, "image/"):
		if err := s.storePreviewImage(ctx, og, resp); err != nil {
			return nil, err
		}
		return og, nil
	case mediaType == "text/html" || mediaType == "application/xhtml+xml":
	default:
		return og, nil // nothing to preview; the spec allows an empty answer
	}
	body, err := charset.NewReader(io.LimitReader(resp.Body, s.cfg.URLPreviewMaxBytes), contentType)
	if err != nil {
		return og, nil // an unknown charset: no preview rather than garbage
	}
	og = parseOpenGraph(body)
	if raw, ok := og["og:image"].(string); ok {
		delete(og, "og:image")
		// og:image:* describe the page's idea of the image; replace them
		// with what we measure, or drop them with the image.
		for _, k := range []string{"og:image:width", "og:image:height", "og:image:type"} {
			delete(og, k)
		}
		if imageURL, err := resp.Request.URL.Parse(strings.TrimSpace(raw)); err == nil &&
			(imageURL.Scheme == "http" || imageURL.Scheme == "https") {
			if imgResp, err := s.fetch(ctx, imageURL, "image/*"); err == nil {
				if err := s.storePreviewImage(ctx, og, imgResp); err != nil {
					httpx.Logger(ctx).Debug("preview image not stored", "err", err)
				}
				imgResp.Body.Close()
			}
		}
	}
	if _, ok := og["og:url"]; !ok {
		og["og:url"] = resp.Request.URL.String()
	}
	return og, nil
}

// storePreviewImage stores an image response as server-owned local media
// and describes it the way the spec's preview answer does: og:image (the
// mxc:// URI), og:image:type, og:image:width/height and matrix:image:size.
func (s *Server) storePreviewImage(ctx context.Context, og map[string]any, resp *http.Response) error {
	contentType := servedContentType(resp.Header.Get("Content-Type"))
	if !strings.HasPrefix(contentType, "image/") {
		return errors.New("og:image is not an image")
	}
	if resp.ContentLength > s.cfg.MaxUploadBytes {
		return tooLarge(s.cfg.MaxUploadBytes)
	}
	mxc, err := s.Upload(ctx, "", contentType, "", resp.Body)
	if err != nil {
		return err
	}
	m, err := s.store.get(ctx, s.serverName, strings.TrimPrefix(mxc, "mxc://"+s.serverName+"/"))
	if err != nil || m == nil {
		return errors.Join(err, errors.New("stored preview image vanished"))
	}
	og["og:image"] = mxc
	og["og:image:type"] = contentType
	og["matrix:image:size"] = m.Size
	if f, err := s.blobs.open(m.SHA256); err == nil {
		if cfg, _, err := image.DecodeConfig(io.LimitReader(f, 1<<20)); err == nil {
			og["og:image:width"] = cfg.Width
			og["og:image:height"] = cfg.Height
		}
		f.Close()
	}
	return nil
}
