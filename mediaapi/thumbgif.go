package mediaapi

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"image"
	"image/color"
	"image/color/palette"
	"image/gif"
	"io"
	"net/http"

	"golang.org/x/image/draw"

	"github.com/myelin-chat/myelin/internal/mxerr"
)

// Animated GIF thumbnails (animated=true, spec v1.11).
//
// Spec: client-server-api, GET /_matrix/client/v1/media/thumbnail,
// "animated": when true the server SHOULD return an animated thumbnail if
// possible; when false it MUST NOT.

const (
	// animatedPixelFactor bounds the work of an animated thumbnail: frames
	// x canvas pixels may be at most max_image_pixels times this. Past
	// it, the thumbnail is static (the first frame).
	animatedPixelFactor = 2
	// maxGIFFrames: GIFs with more frames are not thumbnailed.
	maxGIFFrames = 10_000
)

var errGIFStructure = errors.New("gif: malformed block structure")

// gifFrameCount counts the image descriptors of a GIF by walking its
// blocks, skipping colour tables and data sub-blocks without decoding
// anything. More than limit frames is an error. On an error it returns
// the frames seen so far (limit+1 for too many).
func gifFrameCount(r io.Reader, limit int) (frames int, err error) {
	br := bufio.NewReader(r)
	var head [13]byte // header and logical screen descriptor
	if _, err := io.ReadFull(br, head[:]); err != nil {
		return 0, err
	}
	if string(head[:6]) != "GIF87a" && string(head[:6]) != "GIF89a" {
		return 0, errGIFStructure
	}
	if err := skipColorTable(br, head[10]); err != nil {
		return 0, err
	}
	for {
		b, err := br.ReadByte()
		if err != nil {
			return frames, err
		}
		switch b {
		case 0x21: // extension: label, then sub-blocks
			if _, err := br.ReadByte(); err != nil {
				return frames, err
			}
		case 0x2C: // image descriptor
			frames++
			if frames > limit {
				return frames, errors.New("gif: too many frames")
			}
			var desc [9]byte
			if _, err := io.ReadFull(br, desc[:]); err != nil {
				return frames, err
			}
			if err := skipColorTable(br, desc[8]); err != nil {
				return frames, err
			}
			if _, err := br.ReadByte(); err != nil { // LZW minimum code size
				return frames, err
			}
		case 0x3B: // trailer
			if frames == 0 {
				return frames, errGIFStructure
			}
			return frames, nil
		default:
			return frames, errGIFStructure
		}
		if err := skipSubBlocks(br); err != nil {
			return frames, err
		}
	}
}

// skipColorTable skips the colour table a packed field announces.
func skipColorTable(br *bufio.Reader, packed byte) error {
	if packed&0x80 == 0 {
		return nil
	}
	_, err := br.Discard(3 << ((packed & 7) + 1))
	return err
}

// skipSubBlocks skips data sub-blocks up to their zero-length terminator.
func skipSubBlocks(br *bufio.Reader) error {
	for {
		n, err := br.ReadByte()
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		if _, err := br.Discard(int(n)); err != nil {
			return err
		}
	}
}

// thumbnailPalette is the output palette: transparent, then 255 colours.
var thumbnailPalette = append(color.Palette{color.RGBA{}}, palette.Plan9[:255]...)

// generateAnimatedThumbnail makes an animated GIF thumbnail of m: every
// frame is composited onto the canvas as a viewer would (honouring each
// frame's disposal), scaled or cropped with resize, and re-encoded with
// the original delays and loop count. The caller has checked the frame
// count and size against max_image_pixels.
func (s *Server) generateAnimatedThumbnail(ctx context.Context, m *mediaRow, key thumbKey) (*servedThumb, error) {
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
	src, err := gif.DecodeAll(f)
	if err != nil || len(src.Image) == 0 {
		return nil, mxerr.Wrap(err, mxerr.Unknown, "cannot generate thumbnails for the requested content").WithStatus(http.StatusBadRequest)
	}
	canvasRect := image.Rect(0, 0, src.Config.Width, src.Config.Height)
	if canvasRect.Empty() {
		canvasRect = src.Image[0].Bounds()
	}
	canvas := image.NewRGBA(canvasRect)
	out := &gif.GIF{LoopCount: src.LoopCount}
	var saved *image.RGBA
	for i, frame := range src.Image {
		disposal := byte(0)
		if i < len(src.Disposal) {
			disposal = src.Disposal[i]
		}
		if disposal == gif.DisposalPrevious {
			saved = image.NewRGBA(canvasRect)
			copy(saved.Pix, canvas.Pix)
		}
		draw.Draw(canvas, frame.Bounds(), frame, frame.Bounds().Min, draw.Over)
		scaled := resize(canvas, key)
		pal := image.NewPaletted(scaled.Bounds(), thumbnailPalette)
		draw.Draw(pal, pal.Bounds(), scaled, scaled.Bounds().Min, draw.Src)
		out.Image = append(out.Image, pal)
		delay := 0
		if i < len(src.Delay) {
			delay = src.Delay[i]
		}
		out.Delay = append(out.Delay, delay)
		// Every output frame is the whole picture: clear before the next.
		out.Disposal = append(out.Disposal, gif.DisposalBackground)
		switch disposal {
		case gif.DisposalBackground:
			draw.Draw(canvas, frame.Bounds(), image.Transparent, image.Point{}, draw.Src)
		case gif.DisposalPrevious:
			canvas = saved
		}
	}
	var buf bytes.Buffer
	if err := gif.EncodeAll(&buf, out); err != nil {
		return nil, err
	}
	sha, size, err := s.blobs.put(&buf, int64(buf.Len()))
	if err != nil {
		return nil, err
	}
	row := &thumbRow{ContentType: "image/gif", Size: size, SHA256: sha}
	if err := s.store.putThumbnail(ctx, m.ServerName, m.MediaID, key, row, s.now().UnixMilli()); err != nil {
		return nil, err
	}
	s.thumbnailAdded(ctx, m)
	return &servedThumb{contentType: "image/gif", sha: sha, size: size, modified: m.Uploaded}, nil
}
