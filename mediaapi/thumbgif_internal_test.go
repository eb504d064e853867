package mediaapi

import (
	"bytes"
	"image"
	"image/color/palette"
	"image/gif"
	"testing"
)

func encodeFrames(t *testing.T, n int) []byte {
	t.Helper()
	g := &gif.GIF{}
	for i := 0; i < n; i++ {
		g.Image = append(g.Image, image.NewPaletted(image.Rect(0, 0, 20, 10), palette.Plan9))
		g.Delay = append(g.Delay, 5)
	}
	var buf bytes.Buffer
	if err := gif.EncodeAll(&buf, g); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestGIFFrameCount(t *testing.T) {
	for _, n := range []int{1, 3, 7} {
		if got, err := gifFrameCount(bytes.NewReader(encodeFrames(t, n)), 100); got != n || err != nil {
			t.Errorf("%d frames: counted %d, %v", n, got, err)
		}
	}
	if got, err := gifFrameCount(bytes.NewReader(encodeFrames(t, 7)), 5); err == nil || got != 6 {
		t.Errorf("7 frames with a limit of 5: %d, %v; want an error after 6", got, err)
	}
	// Cut inside the last frame: an error, with the frames seen so far.
	data := encodeFrames(t, 3)
	if got, err := gifFrameCount(bytes.NewReader(data[:len(data)-5]), 100); err == nil || got != 3 {
		t.Errorf("truncated 3-frame GIF: %d, %v", got, err)
	}
	if _, err := gifFrameCount(bytes.NewReader([]byte("\x89PNG\r\n\x1a\n....")), 100); err == nil {
		t.Error("a PNG was counted as a GIF")
	}
}
