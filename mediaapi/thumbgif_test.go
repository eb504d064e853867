package mediaapi_test

import (
	"bytes"
	"image"
	"image/color"
	"image/color/palette"
	"image/gif"
	"net/http"
	"testing"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
)

// gifBytes makes a w x h GIF of n frames, each a different solid colour
// with a moving square.
func gifBytes(t *testing.T, w, h, n int) []byte {
	t.Helper()
	g := &gif.GIF{}
	for i := 0; i < n; i++ {
		frame := image.NewPaletted(image.Rect(0, 0, w, h), palette.Plan9)
		bg := color.RGBA{uint8(80 * i), 40, uint8(200 - 60*i), 255}
		for y := 0; y < h; y++ {
			for x := 0; x < w; x++ {
				c := color.Color(bg)
				if x >= 10*i && x < 10*i+20 && y < 20 {
					c = color.White
				}
				frame.Set(x, y, c)
			}
		}
		g.Image = append(g.Image, frame)
		g.Delay = append(g.Delay, 10*(i+1))
	}
	var buf bytes.Buffer
	if err := gif.EncodeAll(&buf, g); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// thumbFrames fetches a thumbnail and returns its content type and frames
// (one for a non-GIF image).
func thumbFrames(t *testing.T, baseURL, token, id, query string) (string, []image.Image, *gif.GIF) {
	t.Helper()
	resp, body := do(t, http.MethodGet, baseURL+v1+"/thumbnail/localhost/"+id+"?"+query, token, nil, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("thumbnail %s: %d %s", query, resp.StatusCode, body[:min(len(body), 200)])
	}
	ct := resp.Header.Get("Content-Type")
	if ct == "image/gif" {
		g, err := gif.DecodeAll(bytes.NewReader(body))
		if err != nil {
			t.Fatalf("thumbnail %s: %v", query, err)
		}
		frames := make([]image.Image, len(g.Image))
		for i, p := range g.Image {
			frames[i] = p
		}
		return ct, frames, g
	}
	img, _, err := image.Decode(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("thumbnail %s (%s): %v", query, ct, err)
	}
	return ct, []image.Image{img}, nil
}

func TestAnimatedGIFThumbnails(t *testing.T) {
	srv := testserver.Start(t, "sqlite", nil)
	token := register(t, srv.URL)
	id := upload(t, srv.URL, token, "image/gif", "anim.gif", gifBytes(t, 200, 100, 3))

	for range 2 { // generated, then from the cache
		ct, frames, g := thumbFrames(t, srv.URL, token, id, "width=96&height=96&method=crop&animated=true")
		if ct != "image/gif" || len(frames) != 3 {
			t.Fatalf("animated=true: %s with %d frames, want image/gif with 3", ct, len(frames))
		}
		for i, f := range frames {
			if b := f.Bounds(); b.Dx() != 96 || b.Dy() != 96 {
				t.Errorf("frame %d is %dx%d, want 96x96", i, b.Dx(), b.Dy())
			}
		}
		if g.Delay[0] != 10 || g.Delay[2] != 30 {
			t.Errorf("delays %v, want the original 10, 20, 30", g.Delay)
		}
		// The frames differ (the animation survived scaling).
		if frames[0].At(60, 60) == frames[2].At(60, 60) {
			t.Error("first and last frames are the same colour")
		}
	}
	// animated=false (and no animated): one frame, as before.
	for _, q := range []string{"width=96&height=96&method=crop&animated=false", "width=96&height=96&method=crop"} {
		ct, frames, _ := thumbFrames(t, srv.URL, token, id, q)
		if len(frames) != 1 || ct == "image/gif" {
			t.Errorf("%s: %s with %d frames, want a static image", q, ct, len(frames))
		}
		if b := frames[0].Bounds(); b.Dx() != 96 || b.Dy() != 96 {
			t.Errorf("%s: %dx%d", q, b.Dx(), b.Dy())
		}
	}
	// Scaled: the 320x240 size fits the original, which is returned as it
	// is when animation is wanted, and as its first frame when it is not.
	ct, frames, _ := thumbFrames(t, srv.URL, token, id, "width=300&height=200&method=scale&animated=true")
	if ct != "image/gif" || len(frames) != 3 || frames[0].Bounds().Dx() != 200 {
		t.Errorf("animated=true, original fits: %s with %d frames", ct, len(frames))
	}
	ct, frames, _ = thumbFrames(t, srv.URL, token, id, "width=300&height=200&method=scale&animated=false")
	if len(frames) != 1 || ct == "image/gif" || frames[0].Bounds().Dx() != 200 || frames[0].Bounds().Dy() != 100 {
		t.Errorf("animated=false, original fits: %s with %d frames (must not be animated)", ct, len(frames))
	}

	// A single-frame GIF has no animated thumbnail: the static one.
	still := upload(t, srv.URL, token, "image/gif", "still.gif", gifBytes(t, 200, 100, 1))
	ct, frames, _ = thumbFrames(t, srv.URL, token, still, "width=96&height=96&method=crop&animated=true")
	if ct != "image/png" || len(frames) != 1 {
		t.Errorf("single-frame GIF, animated=true: %s with %d frames", ct, len(frames))
	}
}

// Frames x pixels past max_image_pixels x 2: the thumbnail is static.
func TestAnimatedGIFThumbnailOverPixelBudgetIsStatic(t *testing.T) {
	srv := testserver.Start(t, "sqlite", func(c *config.Config) { c.MediaAPI.MaxImagePixels = 25_000 })
	token := register(t, srv.URL)
	small := upload(t, srv.URL, token, "image/gif", "", gifBytes(t, 200, 100, 2)) // 40 000 <= 50 000
	big := upload(t, srv.URL, token, "image/gif", "", gifBytes(t, 200, 100, 3))   // 60 000 > 50 000
	if _, frames, _ := thumbFrames(t, srv.URL, token, small, "width=96&height=96&method=crop&animated=true"); len(frames) != 2 {
		t.Errorf("within the budget: %d frames, want 2", len(frames))
	}
	ct, frames, _ := thumbFrames(t, srv.URL, token, big, "width=96&height=96&method=crop&animated=true")
	if len(frames) != 1 || ct == "image/gif" {
		t.Errorf("over the budget: %s with %d frames, want static", ct, len(frames))
	}
}
