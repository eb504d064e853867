package mediaapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/storage"
)

var userCounter atomic.Int64

// register creates a user through the open-registration flow and
// returns its access token.
func register(t *testing.T, baseURL string) string {
	t.Helper()
	name := "user" + strings.ReplaceAll(time.Now().Format("150405.000000"), ".", "") + "x" + itoa(userCounter.Add(1))
	body := map[string]any{"username": name, "password": "correct horse battery", "auth": map[string]any{"type": "m.login.dummy"}}
	for attempt := 0; attempt < 2; attempt++ {
		raw, _ := json.Marshal(body)
		resp, err := http.Post(baseURL+"/_matrix/client/v3/register", "application/json", bytes.NewReader(raw))
		if err != nil {
			t.Fatal(err)
		}
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return out["access_token"].(string)
		}
		session, _ := out["session"].(string)
		if resp.StatusCode != http.StatusUnauthorized || session == "" {
			t.Fatalf("register: %d %v", resp.StatusCode, out)
		}
		body["auth"] = map[string]any{"type": "m.login.dummy", "session": session}
	}
	t.Fatal("register: no token after two attempts")
	return ""
}

func itoa(n int64) string { b, _ := json.Marshal(n); return string(b) }

// do sends a request and returns the response with its body read.
func do(t *testing.T, method, url, token string, body io.Reader, header map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, data
}

// upload posts data and returns the media ID from the content URI.
func upload(t *testing.T, baseURL, token, contentType, filename string, data []byte) string {
	t.Helper()
	u := baseURL + "/_matrix/media/v3/upload"
	if filename != "" {
		u += "?filename=" + url.QueryEscape(filename)
	}
	resp, body := do(t, http.MethodPost, u, token, bytes.NewReader(data), map[string]string{"Content-Type": contentType})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("upload: %d %s", resp.StatusCode, body)
	}
	var out struct {
		ContentURI string `json:"content_uri"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatal(err)
	}
	i := strings.LastIndexByte(out.ContentURI, '/')
	if !strings.HasPrefix(out.ContentURI, "mxc://") || i < 0 {
		t.Fatalf("content_uri = %q", out.ContentURI)
	}
	return out.ContentURI[i+1:]
}

func errcode(t *testing.T, body []byte) string {
	t.Helper()
	var e struct {
		Errcode string `json:"errcode"`
	}
	_ = json.Unmarshal(body, &e)
	return e.Errcode
}

func makeImage(w, h int) image.Image {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			img.Set(x, y, color.RGBA{uint8(x * 255 / w), uint8(y * 255 / h), 128, 255})
		}
	}
	return img
}

func pngBytes(t *testing.T, w, h int) []byte {
	var buf bytes.Buffer
	if err := png.Encode(&buf, makeImage(w, h)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func jpegBytes(t *testing.T, w, h int) []byte {
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, makeImage(w, h), nil); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// storeFiles lists the content files (not temporary ones) in the store.
func storeFiles(t *testing.T, cfg *config.Config) (blobs, temps []string) {
	t.Helper()
	root := cfg.MediaAPI.StorePath
	if root == "" {
		root = filepath.Join(cfg.Global.DataDir, "media")
	}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if filepath.Base(filepath.Dir(p)) == "tmp" {
			temps = append(temps, p)
		} else {
			blobs = append(blobs, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return blobs, temps
}

func countRows(t *testing.T, db *storage.DB, query string, args ...any) int {
	t.Helper()
	var n int
	if err := db.Reader().QueryRow(context.Background(), query, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
