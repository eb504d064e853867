package mediaapi_test

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"image"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
)

const (
	v1     = "/_matrix/client/v1/media"
	legacy = "/_matrix/media/v3"
)

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

func TestUploadThenDownloadIsByteIdentical(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		token := register(t, srv.URL)
		data := randomBytes(300_000)
		id := upload(t, srv.URL, token, "application/octet-stream", "holiday notes.bin", data)

		resp, body := do(t, http.MethodGet, srv.URL+v1+"/download/localhost/"+id, token, nil, nil)
		if resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
			t.Fatalf("download: %d, %d bytes, identical=%v", resp.StatusCode, len(body), bytes.Equal(body, data))
		}
		h := resp.Header
		if got := h.Get("Content-Disposition"); got != `attachment; filename="holiday notes.bin"` {
			t.Errorf("Content-Disposition = %q", got)
		}
		if h.Get("Content-Type") != "application/octet-stream" || h.Get("X-Content-Type-Options") != "nosniff" ||
			h.Get("Cross-Origin-Resource-Policy") != "cross-origin" || !strings.HasPrefix(h.Get("Content-Security-Policy"), "sandbox; default-src 'none'") {
			t.Errorf("headers = %v", h)
		}
		// The file name in the path overrides the uploaded one.
		resp, _ = do(t, http.MethodGet, srv.URL+v1+"/download/localhost/"+id+"/other.txt", token, nil, nil)
		if got := resp.Header.Get("Content-Disposition"); got != `attachment; filename="other.txt"` {
			t.Errorf("override Content-Disposition = %q", got)
		}
		// Authenticated endpoints need a token.
		for _, path := range []string{"/download/localhost/" + id, "/thumbnail/localhost/" + id + "?width=32&height=32", "/config", "/preview_url?url=https://example.org"} {
			resp, body := do(t, http.MethodGet, srv.URL+v1+path, "", nil, nil)
			if resp.StatusCode != http.StatusUnauthorized || errcode(t, body) != "M_MISSING_TOKEN" {
				t.Errorf("GET %s without a token: %d %s", path, resp.StatusCode, body)
			}
		}
		resp, _ = do(t, http.MethodPost, srv.URL+legacy+"/upload", "", bytes.NewReader(data), nil)
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("upload without a token: %d", resp.StatusCode)
		}
		// Uploaded after the freeze (the first start): not on the legacy endpoint.
		resp, body = do(t, http.MethodGet, srv.URL+legacy+"/download/localhost/"+id, "", nil, nil)
		if resp.StatusCode != http.StatusNotFound || errcode(t, body) != "M_NOT_FOUND" {
			t.Errorf("legacy download after the freeze: %d %s", resp.StatusCode, body)
		}
		resp, body = do(t, http.MethodGet, srv.URL+v1+"/config", token, nil, nil)
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"m.upload.size":52428800`) {
			t.Errorf("config: %d %s", resp.StatusCode, body)
		}
		resp, _ = do(t, http.MethodGet, srv.URL+v1+"/download/localhost/nosuchmedia", token, nil, nil)
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("unknown media: %d", resp.StatusCode)
		}
	})
}

func TestUploadBeyondGlobalBodyLimit(t *testing.T) {
	srv := testserver.Start(t, "sqlite", nil)
	token := register(t, srv.URL)
	data := randomBytes(int(srv.Config.HTTP.MaxBodyBytes) * 3)
	id := upload(t, srv.URL, token, "video/mp4", "", data)
	resp, body := do(t, http.MethodGet, srv.URL+v1+"/download/localhost/"+id, token, nil, nil)
	if !bytes.Equal(body, data) {
		t.Fatalf("3 MiB upload did not round-trip: %d", resp.StatusCode)
	}
	if got := resp.Header.Get("Content-Disposition"); got != "inline" {
		t.Errorf("video/mp4 without a file name: Content-Disposition = %q, want inline", got)
	}
}

func TestDuplicateUploadIsStoredOnce(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		token := register(t, srv.URL)
		data := randomBytes(10_000)
		a := upload(t, srv.URL, token, "application/octet-stream", "a", data)
		b := upload(t, srv.URL, token, "text/plain", "b", data)
		if a == b {
			t.Fatal("two uploads got one media ID")
		}
		blobs, _ := storeFiles(t, srv.Config)
		if len(blobs) != 1 {
			t.Fatalf("store holds %d files, want 1: %v", len(blobs), blobs)
		}
		for _, id := range []string{a, b} {
			_, body := do(t, http.MethodGet, srv.URL+v1+"/download/localhost/"+id, token, nil, nil)
			if !bytes.Equal(body, data) {
				t.Errorf("%s: wrong bytes", id)
			}
		}
	})
}

func TestLegacyEndpointsServeMediaFromBeforeTheFreeze(t *testing.T) {
	srv := testserver.Start(t, "sqlite", func(c *config.Config) {
		c.MediaAPI.LegacyFreeze = time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	})
	token := register(t, srv.URL)
	data := pngBytes(t, 200, 100)
	id := upload(t, srv.URL, token, "image/png", "p.png", data)
	resp, body := do(t, http.MethodGet, srv.URL+legacy+"/download/localhost/"+id, "", nil, nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
		t.Fatalf("legacy download before the freeze: %d", resp.StatusCode)
	}
	if got := resp.Header.Get("Content-Disposition"); got != `inline; filename="p.png"` {
		t.Errorf("Content-Disposition = %q", got)
	}
	resp, _ = do(t, http.MethodGet, srv.URL+legacy+"/thumbnail/localhost/"+id+"?width=32&height=32&method=crop", "", nil, nil)
	if resp.StatusCode != http.StatusOK {
		t.Errorf("legacy thumbnail: %d", resp.StatusCode)
	}
}

func TestHTMLIsServedAsSandboxedAttachment(t *testing.T) {
	srv := testserver.Start(t, "sqlite", nil)
	token := register(t, srv.URL)
	page := []byte(`<html><script>alert(document.cookie)</script></html>`)
	id := upload(t, srv.URL, token, "text/html", "evil\".html", page)
	resp, body := do(t, http.MethodGet, srv.URL+v1+"/download/localhost/"+id, token, nil, nil)
	if !bytes.Equal(body, page) {
		t.Fatal("wrong bytes")
	}
	h := resp.Header
	if got := h.Get("Content-Disposition"); !strings.HasPrefix(got, "attachment;") || !strings.Contains(got, `filename*=UTF-8''evil%22.html`) {
		t.Errorf("Content-Disposition = %q", got)
	}
	want := "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; media-src 'self'; object-src 'self';"
	if h.Get("Content-Security-Policy") != want || h.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("headers = %v", h)
	}
}

// rawRequest sends bytes over TCP and returns the status line's code.
func rawRequest(t *testing.T, baseURL, request string) (int, string) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(baseURL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	go func() { _, _ = conn.Write([]byte(request)) }()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading response: %v", err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	return resp.StatusCode, buf.String()
}

func TestBadMediaIDsAndServerNamesAre400(t *testing.T) {
	srv := testserver.Start(t, "sqlite", nil)
	token := register(t, srv.URL)
	for _, path := range []string{
		v1 + "/download/localhost/..",
		v1 + "/download/localhost/%2e%2e",
		v1 + "/download/localhost/%2E%2E%2Fetc%2Fpasswd",
		v1 + "/download/localhost/../x",
		v1 + "/download/localhost/a.b",
		v1 + "/download/localhost/a%00b",
		v1 + "/download/localhost/%C0%AE%C0%AE",
		v1 + "/download/../abcdef",
		v1 + "/download/%2e%2e/abcdef",
		v1 + "/download/bad..name/abcdef",
		v1 + "/download/under_score.org/abcdef",
		v1 + "/thumbnail/localhost/..?width=32&height=32",
		legacy + "/download/localhost/..",
		legacy + "/thumbnail/localhost/%2e%2e?width=32&height=32",
	} {
		code, body := rawRequest(t, srv.URL, "GET "+path+" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+token+"\r\nConnection: close\r\n\r\n")
		if code != http.StatusBadRequest {
			t.Errorf("GET %s: %d %s, want 400", path, code, body)
		}
	}
	code, body := rawRequest(t, srv.URL, "PUT "+legacy+"/upload/localhost/..%2F.. HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+token+"\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx")
	if code != http.StatusBadRequest {
		t.Errorf("PUT with a bad media ID: %d %s", code, body)
	}
}

func TestOverLimitUploadsAreRefusedWhileStreaming(t *testing.T) {
	testserver.ForEachEngine(t, func(c *config.Config) { c.MediaAPI.MaxUploadBytes = 1000 }, func(t *testing.T, srv *testserver.Server) {
		token := register(t, srv.URL)
		big := strings.Repeat("A", 5000)
		chunked := fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(big), big)
		cases := map[string]string{
			"declared too large": "POST " + legacy + "/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token +
				"\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n" + big,
			"chunked": "POST " + legacy + "/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token +
				"\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunked,
			// Content-Length claims little; the chunked framing carries more.
			"lying Content-Length": "POST " + legacy + "/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token +
				"\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunked,
			"multipart form": "POST " + legacy + "/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token +
				"\r\nContent-Type: Multipart/Form-Data; boundary=xx\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunked,
		}
		for name, req := range cases {
			code, body := rawRequest(t, srv.URL, req)
			// With both headers, chunked framing wins (RFC 9112 6.3) and
			// the streamed count, not the claim, trips the limit.
			if code != http.StatusRequestEntityTooLarge || !strings.Contains(body, "M_TOO_LARGE") {
				t.Errorf("%s: %d %s, want 413 M_TOO_LARGE", name, code, body)
			}
		}
		blobs, temps := storeFiles(t, srv.Config)
		if len(blobs)+len(temps) != 0 {
			t.Errorf("files left behind: %v %v", blobs, temps)
		}
		if n := countRows(t, srv.HS.DB, `SELECT COUNT(*) FROM media`); n != 0 {
			t.Errorf("%d media rows left behind", n)
		}
		// Exactly at the limit is fine.
		upload(t, srv.URL, token, "text/plain", "", []byte(big[:1000]))
	})
}

func TestQuotaIsEnforced(t *testing.T) {
	srv := testserver.Start(t, "sqlite", func(c *config.Config) {
		c.MediaAPI.MaxUploadBytes = 1000
		c.MediaAPI.UserQuotaBytes = 1500
	})
	token := register(t, srv.URL)
	upload(t, srv.URL, token, "text/plain", "", randomBytes(1000))
	resp, body := do(t, http.MethodPost, srv.URL+legacy+"/upload", token, bytes.NewReader(randomBytes(1000)), nil)
	if resp.StatusCode != http.StatusForbidden || errcode(t, body) != "M_FORBIDDEN" {
		t.Fatalf("over quota: %d %s", resp.StatusCode, body)
	}
	other := register(t, srv.URL)
	upload(t, srv.URL, other, "text/plain", "", randomBytes(1000))
}

func TestAsyncUpload(t *testing.T) {
	testserver.ForEachEngine(t, func(c *config.Config) { c.MediaAPI.MaxPendingUploads = 2 }, func(t *testing.T, srv *testserver.Server) {
		alice, bob := register(t, srv.URL), register(t, srv.URL)
		create := func(token string) (string, map[string]any) {
			resp, body := do(t, http.MethodPost, srv.URL+"/_matrix/media/v1/create", token, nil, nil)
			var out map[string]any
			_ = json.Unmarshal(body, &out)
			if resp.StatusCode != http.StatusOK {
				return "", out
			}
			uri := out["content_uri"].(string)
			return uri[strings.LastIndexByte(uri, '/')+1:], out
		}
		id, out := create(alice)
		if exp, _ := out["unused_expires_at"].(float64); int64(exp) < time.Now().Add(23*time.Hour).UnixMilli() {
			t.Errorf("unused_expires_at = %v, want ~24h ahead", out["unused_expires_at"])
		}
		resp, body := do(t, http.MethodGet, srv.URL+v1+"/download/localhost/"+id+"?timeout_ms=100", alice, nil, nil)
		if resp.StatusCode != http.StatusGatewayTimeout || errcode(t, body) != "M_NOT_YET_UPLOADED" {
			t.Fatalf("pending download: %d %s", resp.StatusCode, body)
		}
		// A download waiting for the upload gets it when it lands.
		data := randomBytes(5000)
		var wg sync.WaitGroup
		wg.Add(1)
		var waited []byte
		go func() {
			defer wg.Done()
			_, waited = do(t, http.MethodGet, srv.URL+v1+"/download/localhost/"+id+"?timeout_ms=10000", bob, nil, nil)
		}()
		time.Sleep(300 * time.Millisecond)
		resp, body = do(t, http.MethodPut, srv.URL+legacy+"/upload/localhost/"+id+"?filename=late.bin", bob, bytes.NewReader(data), nil)
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("PUT to another user's ID: %d %s", resp.StatusCode, body)
		}
		resp, body = do(t, http.MethodPut, srv.URL+legacy+"/upload/localhost/"+id+"?filename=late.bin", alice, bytes.NewReader(data), nil)
		if resp.StatusCode != http.StatusOK || string(body) != "{}" {
			t.Fatalf("PUT: %d %s", resp.StatusCode, body)
		}
		wg.Wait()
		if !bytes.Equal(waited, data) {
			t.Errorf("waiting download got %d bytes", len(waited))
		}
		resp, body = do(t, http.MethodPut, srv.URL+legacy+"/upload/localhost/"+id, alice, bytes.NewReader(data), nil)
		if resp.StatusCode != http.StatusConflict || errcode(t, body) != "M_CANNOT_OVERWRITE_MEDIA" {
			t.Errorf("second PUT: %d %s", resp.StatusCode, body)
		}
		resp, body = do(t, http.MethodPut, srv.URL+legacy+"/upload/localhost/neverCreated", alice, bytes.NewReader(data), nil)
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("PUT to an unknown ID: %d %s", resp.StatusCode, body)
		}
		// Pending IDs are limited per user.
		create(alice)
		create(alice)
		if _, out := create(alice); out["errcode"] != "M_LIMIT_EXCEEDED" {
			t.Errorf("third pending create: %v", out)
		}
	})
}

func decodeDims(t *testing.T, data []byte) (int, int, string) {
	t.Helper()
	cfg, format, err := image.DecodeConfig(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("thumbnail does not decode: %v", err)
	}
	return cfg.Width, cfg.Height, format
}

func TestThumbnails(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		token := register(t, srv.URL)
		pngID := upload(t, srv.URL, token, "image/png", "", pngBytes(t, 1000, 800))
		jpegID := upload(t, srv.URL, token, "image/jpeg", "", jpegBytes(t, 1200, 900))
		small := pngBytes(t, 20, 20)
		smallID := upload(t, srv.URL, token, "image/png", "", small)
		cases := []struct {
			id, query  string
			w, h       int
			exact      bool
			format, ct string
		}{
			{pngID, "width=96&height=96&method=crop", 96, 96, true, "png", "image/png"},
			{pngID, "width=32&height=32&method=crop", 32, 32, true, "png", "image/png"},
			{pngID, "width=300&height=200&method=scale", 320, 240, false, "png", "image/png"},
			{pngID, "width=640&height=480", 640, 480, false, "png", "image/png"},
			{jpegID, "width=640&height=480&method=scale", 640, 480, false, "jpeg", "image/jpeg"},
			{jpegID, "width=96&height=96&method=crop", 96, 96, true, "jpeg", "image/jpeg"},
			{jpegID, "width=800&height=600&method=scale&animated=true", 800, 600, false, "jpeg", "image/jpeg"},
		}
		for _, c := range cases {
			resp, body := do(t, http.MethodGet, srv.URL+v1+"/thumbnail/localhost/"+c.id+"?"+c.query, token, nil, nil)
			if resp.StatusCode != http.StatusOK {
				t.Errorf("%s: %d %s", c.query, resp.StatusCode, body)
				continue
			}
			w, h, format := decodeDims(t, body)
			if format != c.format || resp.Header.Get("Content-Type") != c.ct {
				t.Errorf("%s: format %s, Content-Type %s", c.query, format, resp.Header.Get("Content-Type"))
			}
			if c.exact && (w != c.w || h != c.h) {
				t.Errorf("%s: crop gave %dx%d, want exactly %dx%d", c.query, w, h, c.w, c.h)
			}
			if !c.exact && (w > c.w || h > c.h || (w != c.w && h != c.h)) {
				t.Errorf("%s: scale gave %dx%d, want it to fit %dx%d touching one side", c.query, w, h, c.w, c.h)
			}
			if got := resp.Header.Get("Content-Disposition"); !strings.HasPrefix(got, "inline; filename=\"thumbnail.") {
				t.Errorf("%s: Content-Disposition %q", c.query, got)
			}
		}
		// Cached: one row per size.
		if n := countRows(t, srv.HS.DB, `SELECT COUNT(*) FROM media_thumbnails`); n != len(cases) {
			t.Errorf("%d cached thumbnails, want %d", n, len(cases))
		}
		do(t, http.MethodGet, srv.URL+v1+"/thumbnail/localhost/"+pngID+"?width=96&height=96&method=crop", token, nil, nil)
		if n := countRows(t, srv.HS.DB, `SELECT COUNT(*) FROM media_thumbnails`); n != len(cases) {
			t.Errorf("a repeated request generated again: %d rows", n)
		}
		// Smaller than asked: the original, not an upscaled copy.
		resp, body := do(t, http.MethodGet, srv.URL+v1+"/thumbnail/localhost/"+smallID+"?width=96&height=96&method=crop", token, nil, nil)
		if resp.StatusCode != http.StatusOK || !bytes.Equal(body, small) {
			t.Errorf("small image: %d, original=%v", resp.StatusCode, bytes.Equal(body, small))
		}
		// Bad parameters and content that is not an image.
		textID := upload(t, srv.URL, token, "image/png", "", []byte("<svg xmlns='http://www.w3.org/2000/svg'/>"))
		for _, q := range []string{pngID + "?width=0&height=10", pngID + "?width=a&height=10", pngID + "?width=10&height=10&method=stretch", textID + "?width=32&height=32"} {
			resp, body := do(t, http.MethodGet, srv.URL+v1+"/thumbnail/localhost/"+q, token, nil, nil)
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("%s: %d %s, want 400", q, resp.StatusCode, body)
			}
		}
	})
}
