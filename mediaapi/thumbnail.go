package mediaapi

import (
	"bytes"
	"context"
	"fmt"
	"image"
	_ "image/gif" // registers the GIF decoder (first frame; DecodeAll in thumbgif.go)
	"image/jpeg"
	"image/png"
	"io"
	"math"
	"net/http"
	"strconv"

	"github.com/go-chi/chi/v5"
	"golang.org/x/image/draw"
	_ "golang.org/x/image/webp" // registers the WebP decoder

	"github.com/myelin-chat/myelin/internal/mxerr"
)

// Only these decoders are registered (JPEG, PNG, GIF and WebP, by the
// imports above): image.DecodeConfig refuses everything else, so SVG,
// TIFF, BMP, PSD and the rest are never handed to a decoder.

// thumbKey identifies a generated thumbnail.
type thumbKey struct {
	Width, Height int
	Method        string
	Animated      bool
}

// thumbRequest is a parsed thumbnail query.
type thumbRequest struct {
	width, height int
	method        string
	animated      bool
}

// maxThumbnailSide bounds the requested dimensions.
const maxThumbnailSide = 1 << 14

// parseThumbRequest reads width, height, method and animated.
//
// Spec: client-server-api, GET /_matrix/client/v1/media/thumbnail: width
// and height are required integers; method is crop or scale; 400 when the
// request does not make sense.
func parseThumbRequest(r *http.Request) (*thumbRequest, error) {
	q := r.URL.Query()
	width, err1 := strconv.Atoi(q.Get("width"))
	height, err2 := strconv.Atoi(q.Get("height"))
	if err1 != nil || err2 != nil {
		return nil, mxerr.New(mxerr.MissingParam, "width and height are required integers")
	}
	if width < 1 || height < 1 || width > maxThumbnailSide || height > maxThumbnailSide {
		return nil, mxerr.New(mxerr.InvalidParam, "width and height must be between 1 and %d", maxThumbnailSide)
	}
	method := q.Get("method")
	switch method {
	case "":
		method = "scale"
	case "crop", "scale":
	default:
		return nil, mxerr.New(mxerr.InvalidParam, "method must be crop or scale")
	}
	animated := false
	switch q.Get("animated") {
	case "", "false":
	case "true":
		animated = true
	default:
		return nil, mxerr.New(mxerr.InvalidParam, "animated must be true or false")
	}
	return &thumbRequest{width: width, height: height, method: method, animated: animated}, nil
}

// pickSize returns the smallest configured size of the requested method
// at least as large as asked, or ok=false when none is.
//
// Spec: client-server-api, "Thumbnails": "Servers MUST NOT return a
// smaller thumbnail than requested, unless the original content makes
// that impossible."
func (s *Server) pickSize(req *thumbRequest) (thumbKey, bool) {
	best, found := thumbKey{}, false
	for _, size := range s.sizes {
		if size.Method != req.method || size.Width < req.width || size.Height < req.height {
			continue
		}
		if !found || size.Width*size.Height < best.Width*best.Height {
			best, found = thumbKey{Width: size.Width, Height: size.Height, Method: size.Method}, true
		}
	}
	// Animated thumbnails (animated=true) use the same sizes; see
	// thumbnailFor for which sources get them.
	return best, found
}

// servedThumb is what a thumbnail request answers with.
type servedThumb struct {
	contentType string
	sha         string
	size        int64
	modified    int64
}

// thumbnailFor finds or makes the thumbnail of m for req. remote selects
// the status for images too large to thumbnail (502 remote, 413 local).
//
// Spec: client-server-api, "Thumbnails" and "Security considerations".
func (s *Server) thumbnailFor(ctx context.Context, m *mediaRow, req *thumbRequest) (*servedThumb, error) {
	key, found := s.pickSize(req)
	// An animated request looks for an animated thumbnail first; only GIFs
	// have them, so for other sources it falls through to the static one.
	key.Animated = req.animated
	if found {
		if t, err := s.cachedThumbnail(ctx, m, key); t != nil || err != nil {
			return t, err
		}
	}
	f, err := s.blobs.open(m.SHA256)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// Measure before decoding anything (security case 25).
	cfg, format, err := image.DecodeConfig(io.LimitReader(f, 1<<20))
	if err != nil || !thumbnailFormats[format] {
		return nil, mxerr.New(mxerr.Unknown, "cannot generate thumbnails for the requested content").WithStatus(http.StatusBadRequest)
	}
	if int64(cfg.Width)*int64(cfg.Height) > s.cfg.MaxImagePixels || cfg.Width <= 0 || cfg.Height <= 0 {
		e := mxerr.New(mxerr.TooLarge, "content is too large to thumbnail")
		if m.ServerName != s.serverName {
			e = e.WithStatus(http.StatusBadGateway)
		}
		return nil, e
	}
	// Whether a GIF is animated, and whether animating its thumbnail is
	// within the decode budget, is read from its block structure without
	// decompressing anything.
	// A GIF the walk cannot finish (truncated, too many frames) is never
	// animated, but may still have a static thumbnail, as before.
	frames, framesErr := 1, error(nil)
	if format == "gif" {
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return nil, err
		}
		frames, framesErr = gifFrameCount(f, maxGIFFrames)
		frames = max(frames, 1)
	}
	animatedSource := frames > 1
	animate := key.Animated && animatedSource && framesErr == nil &&
		int64(frames)*int64(cfg.Width)*int64(cfg.Height) <= s.cfg.MaxImagePixels*animatedPixelFactor
	if key.Animated && !animate {
		key.Animated = false
		if found {
			if t, err := s.cachedThumbnail(ctx, m, key); t != nil || err != nil {
				return t, err
			}
		}
	}
	original := &servedThumb{contentType: "image/" + format, sha: m.SHA256, size: m.Size, modified: m.Uploaded}
	// Spec: "When the content is smaller than the requested dimensions,
	// servers should return the original content"; and no configured size
	// is large enough only when the original is the best answer. But with
	// animated=false the server "MUST NOT return animated thumbnails": an
	// animated original is then replaced by its first frame.
	if !found || (cfg.Width <= key.Width && cfg.Height <= key.Height) {
		if !animatedSource || animate {
			return original, nil
		}
		if !found {
			key = thumbKey{Width: cfg.Width, Height: cfg.Height, Method: "scale"}
			if t, err := s.cachedThumbnail(ctx, m, key); t != nil || err != nil {
				return t, err
			}
		}
	}
	flightKey := fmt.Sprintf("thumb\x00%s\x00%s\x00%d\x00%d\x00%s\x00%t", m.ServerName, m.MediaID, key.Width, key.Height, key.Method, key.Animated)
	v, err, _ := s.flights.Do(flightKey, func() (any, error) {
		if key.Animated {
			return s.generateAnimatedThumbnail(context.WithoutCancel(ctx), m, key)
		}
		return s.generateThumbnail(context.WithoutCancel(ctx), m, key, format)
	})
	if err != nil {
		return nil, err
	}
	return v.(*servedThumb), nil
}

// cachedThumbnail returns the stored thumbnail of m for key, or nil.
func (s *Server) cachedThumbnail(ctx context.Context, m *mediaRow, key thumbKey) (*servedThumb, error) {
	cached, err := s.store.getThumbnail(ctx, m.ServerName, m.MediaID, key)
	if err != nil || cached == nil {
		return nil, err
	}
	return &servedThumb{contentType: cached.ContentType, sha: cached.SHA256, size: cached.Size, modified: m.Uploaded}, nil
}

// thumbnailFormats are the formats decoded for thumbnails.
var thumbnailFormats = map[string]bool{"jpeg": true, "png": true, "gif": true, "webp": true}

func (s *Server) generateThumbnail(ctx context.Context, m *mediaRow, key thumbKey, format string) (*servedThumb, error) {
	select {
	case s.thumbJobs <- struct{}{}:
		defer func() { <-s.thumbJobs }()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	f, err := s.blobs.open(m.SHA256)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// image.Decode of a GIF returns its first frame.
	src, _, err := image.Decode(f)
	if err != nil {
		return nil, mxerr.Wrap(err, mxerr.Unknown, "cannot generate thumbnails for the requested content").WithStatus(http.StatusBadRequest)
	}
	dst := resize(src, key)
	var buf bytes.Buffer
	contentType := "image/png"
	if format == "jpeg" {
		contentType = "image/jpeg"
		err = jpeg.Encode(&buf, dst, &jpeg.Options{Quality: 85})
	} else {
		err = (&png.Encoder{CompressionLevel: png.BestSpeed}).Encode(&buf, dst)
	}
	if err != nil {
		return nil, err
	}
	sha, size, err := s.blobs.put(&buf, int64(buf.Len()))
	if err != nil {
		return nil, err
	}
	row := &thumbRow{ContentType: contentType, Size: size, SHA256: sha}
	if err := s.store.putThumbnail(ctx, m.ServerName, m.MediaID, key, row, s.now().UnixMilli()); err != nil {
		return nil, err
	}
	s.thumbnailAdded(ctx, m)
	return &servedThumb{contentType: contentType, sha: sha, size: size, modified: m.Uploaded}, nil
}

// resize makes the thumbnail of src for key without ever upscaling.
//
// Spec: client-server-api, "Thumbnails": "scale" keeps the aspect ratio
// and fits the requested box; "crop" gives the requested aspect ratio,
// cropping the centre.
func resize(src image.Image, key thumbKey) image.Image {
	b := src.Bounds()
	ow, oh := float64(b.Dx()), float64(b.Dy())
	tw, th := float64(key.Width), float64(key.Height)
	if key.Method == "scale" {
		ratio := math.Min(1, math.Min(tw/ow, th/oh))
		w := max(1, int(math.Round(ow*ratio)))
		h := max(1, int(math.Round(oh*ratio)))
		dst := image.NewRGBA(image.Rect(0, 0, w, h))
		draw.BiLinear.Scale(dst, dst.Bounds(), src, b, draw.Src, nil)
		return dst
	}
	ratio := math.Max(tw/ow, th/oh)
	if ratio >= 1 {
		// Smaller than the box on a side: crop to the box, no scaling.
		w, h := min(b.Dx(), key.Width), min(b.Dy(), key.Height)
		r := image.Rect(0, 0, w, h).Add(b.Min).Add(image.Pt((b.Dx()-w)/2, (b.Dy()-h)/2))
		dst := image.NewRGBA(image.Rect(0, 0, w, h))
		draw.Draw(dst, dst.Bounds(), src, r.Min, draw.Src)
		return dst
	}
	// The part of the original that, scaled by ratio, fills the box.
	sw, sh := int(math.Round(tw/ratio)), int(math.Round(th/ratio))
	sw, sh = min(sw, b.Dx()), min(sh, b.Dy())
	r := image.Rect(0, 0, sw, sh).Add(b.Min).Add(image.Pt((b.Dx()-sw)/2, (b.Dy()-sh)/2))
	dst := image.NewRGBA(image.Rect(0, 0, key.Width, key.Height))
	draw.BiLinear.Scale(dst, dst.Bounds(), src, r, draw.Src, nil)
	return dst
}

// thumbnail is GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}.
func (s *Server) thumbnail(w http.ResponseWriter, r *http.Request) error {
	req, err := s.parseMediaRequest(r, chi.URLParam(r, "serverName"))
	if err != nil {
		return err
	}
	tr, err := parseThumbRequest(r)
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
	return s.serveThumbnail(w, r, m, tr, key)
}

// legacyThumbnail is the deprecated, frozen GET /_matrix/media/v3/thumbnail.
func (s *Server) legacyThumbnail(w http.ResponseWriter, r *http.Request) error {
	tr, err := parseThumbRequest(r)
	if err != nil {
		return err
	}
	key := s.ipBudgetKey(r)
	if err := s.budget.take(key, 0); err != nil {
		return err
	}
	m, err := s.legacyResolve(r)
	if err != nil {
		return err
	}
	return s.serveThumbnail(w, r, m, tr, key)
}

// serveThumbnail writes the thumbnail, always inline.
//
// Spec: GET /thumbnail, "Content-Disposition": MUST be inline, SHOULD
// contain a file name. Its bytes are charged to budgetKey's download
// budget before any is sent.
func (s *Server) serveThumbnail(w http.ResponseWriter, r *http.Request, m *mediaRow, tr *thumbRequest, budgetKey string) error {
	t, err := s.thumbnailFor(r.Context(), m, tr)
	if err != nil {
		return err
	}
	if err := s.budget.take(budgetKey, servedBytes(r, t.size)); err != nil {
		return err
	}
	f, err := s.blobs.open(t.sha)
	if err != nil {
		return err
	}
	defer f.Close()
	h := w.Header()
	setSafeHeaders(h)
	h.Set("Content-Type", t.contentType)
	h.Set("Content-Disposition", contentDisposition("inline", "thumbnail."+extension(t.contentType)))
	http.ServeContent(w, r, "", timeMillis(t.modified), f)
	return nil
}

func extension(contentType string) string {
	switch contentType {
	case "image/jpeg":
		return "jpg"
	case "image/gif":
		return "gif"
	case "image/webp":
		return "webp"
	}
	return "png"
}
