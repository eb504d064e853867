package mediaapi_test

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/storage"
)

// pngBomb is a real decompression bomb: a valid 8000x5000 greyscale PNG
// (40 megapixels, 40 MB decoded) compressed to a few tens of kilobytes.
func pngBomb(t *testing.T) []byte {
	t.Helper()
	const w, h = 8000, 5000
	chunk := func(buf *bytes.Buffer, typ string, data []byte) {
		_ = binary.Write(buf, binary.BigEndian, uint32(len(data)))
		crc := crc32.NewIEEE()
		crc.Write([]byte(typ))
		crc.Write(data)
		buf.WriteString(typ)
		buf.Write(data)
		_ = binary.Write(buf, binary.BigEndian, crc.Sum32())
	}
	var out bytes.Buffer
	out.WriteString("\x89PNG\r\n\x1a\n")
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr[0:], w)
	binary.BigEndian.PutUint32(ihdr[4:], h)
	ihdr[8], ihdr[9] = 8, 0 // 8-bit greyscale
	chunk(&out, "IHDR", ihdr)
	var idat bytes.Buffer
	zw, _ := zlib.NewWriterLevel(&idat, zlib.BestCompression)
	row := make([]byte, 1+w) // filter byte + pixels, all zero
	for y := 0; y < h; y++ {
		zw.Write(row)
	}
	zw.Close()
	chunk(&out, "IDAT", idat.Bytes())
	chunk(&out, "IEND", nil)
	return out.Bytes()
}

func TestImageBombIsRefusedWithoutDecoding(t *testing.T) {
	srv := testserver.Start(t, "sqlite", nil)
	token := register(t, srv.URL)
	bomb := pngBomb(t)
	if len(bomb) > 200_000 {
		t.Fatalf("bomb is %d bytes; it should compress far better", len(bomb))
	}
	id := upload(t, srv.URL, token, "image/png", "", bomb)
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	resp, body := do(t, http.MethodGet, srv.URL+v1+"/thumbnail/localhost/"+id+"?width=96&height=96&method=crop", token, nil, nil)
	elapsed := time.Since(start)
	runtime.ReadMemStats(&after)
	if resp.StatusCode != http.StatusRequestEntityTooLarge || errcode(t, body) != "M_TOO_LARGE" {
		t.Fatalf("thumbnail of a 40 MP image: %d %s, want 413 M_TOO_LARGE", resp.StatusCode, body)
	}
	// The allocation below is what tells a decode; this bound leaves a
	// loaded machine room for the request itself.
	if elapsed > 5*time.Second {
		t.Errorf("refusal took %v; it must not decode", elapsed)
	}
	// Decoding would allocate the 40 MB image; measuring allocates little.
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 16<<20 {
		t.Errorf("the request allocated %d MB; the image was decoded", alloc>>20)
	}
	if n := countRows(t, srv.HS.DB, `SELECT COUNT(*) FROM media_thumbnails`); n != 0 {
		t.Errorf("%d thumbnails stored", n)
	}
}

// previewSite serves a page with OpenGraph tags and its image.
func previewSite(t *testing.T, hits *atomic.Int64) *httptest.Server {
	t.Helper()
	img := pngBytes(t, 64, 48)
	mux := http.NewServeMux()
	mux.HandleFunc("/page", func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, `<!doctype html><html><head><title>Fallback title</title>
			<meta property="og:title" content="Myelin &amp; friends">
			<meta property="og:description" content="A homeserver   in Go">
			<meta property="og:image" content="/img.png"><meta property="og:image:width" content="9999">
			</head><body>`+strings.Repeat("<div>", 2000)+`deep</body></html>`)
	})
	mux.HandleFunc("/plain", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprint(w, `<html><head><title>Only a title</title><meta name="description" content="described"></head></html>`)
	})
	mux.HandleFunc("/img.png", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "image/png")
		w.Write(img)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func preview(t *testing.T, baseURL, token, target string) (int, map[string]any) {
	t.Helper()
	resp, body := do(t, http.MethodGet, baseURL+v1+"/preview_url?url="+url.QueryEscape(target), token, nil, nil)
	var out map[string]any
	_ = json.Unmarshal(body, &out)
	return resp.StatusCode, out
}

func TestURLPreviewOfAnAllowedLocalPage(t *testing.T) {
	testserver.ForEachEngine(t, func(c *config.Config) { c.MediaAPI.OutboundIPAllow = []string{"127.0.0.1"} }, func(t *testing.T, srv *testserver.Server) {
		token := register(t, srv.URL)
		var hits atomic.Int64
		site := previewSite(t, &hits)
		code, og := preview(t, srv.URL, token, site.URL+"/page")
		if code != http.StatusOK {
			t.Fatalf("preview: %d %v", code, og)
		}
		if og["og:title"] != "Myelin & friends" || og["og:description"] != "A homeserver in Go" {
			t.Errorf("og = %v", og)
		}
		mxc, _ := og["og:image"].(string)
		if !strings.HasPrefix(mxc, "mxc://localhost/") || og["og:image:width"] != float64(64) || og["og:image:height"] != float64(48) ||
			og["og:image:type"] != "image/png" || og["matrix:image:size"] == nil {
			t.Errorf("image fields = %v", og)
		}
		resp, body := do(t, http.MethodGet, srv.URL+v1+"/download/localhost/"+strings.TrimPrefix(mxc, "mxc://localhost/"), token, nil, nil)
		if resp.StatusCode != http.StatusOK || float64(len(body)) != og["matrix:image:size"] {
			t.Errorf("og:image download: %d, %d bytes", resp.StatusCode, len(body))
		}
		// Cached: the page is not fetched again.
		if code, again := preview(t, srv.URL, token, site.URL+"/page"); code != http.StatusOK || again["og:title"] != og["og:title"] || hits.Load() != 1 {
			t.Errorf("second preview: %d, page fetched %d times", code, hits.Load())
		}
		code, og = preview(t, srv.URL, token, site.URL+"/plain")
		if code != http.StatusOK || og["og:title"] != "Only a title" || og["og:description"] != "described" {
			t.Errorf("fallbacks: %d %v", code, og)
		}
	})
}

func TestURLPreviewRefusesInternalAddresses(t *testing.T) {
	// A second listener on another loopback address: reaching it would
	// show the guard was bypassed.
	var internalHits atomic.Int64
	internal := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		internalHits.Add(1)
		fmt.Fprint(w, `<title>secret</title>`)
	}))
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Skipf("no 127.0.0.2: %v", err)
	}
	internal.Listener = ln
	internal.Start()
	t.Cleanup(internal.Close)
	_, port, _ := net.SplitHostPort(ln.Addr().String())

	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, r.URL.Query().Get("to"), http.StatusFound)
	}))
	t.Cleanup(redirector.Close)

	t.Run("default", func(t *testing.T) {
		srv := testserver.Start(t, "sqlite", nil)
		token := register(t, srv.URL)
		for _, target := range []string{
			"http://127.0.0.2:" + port + "/",
			"http://127.0.0.1:" + port + "/",
			"http://localhost:" + port + "/",
			"http://[::ffff:127.0.0.2]:" + port + "/",
			"http://[::1]:" + port + "/",
			"http://169.254.169.254/latest/meta-data/",
			"http://10.0.0.1/",
			"http://0.0.0.0:" + port + "/",
			redirector.URL + "/?to=" + url.QueryEscape("http://127.0.0.2:"+port+"/"),
		} {
			if code, out := preview(t, srv.URL, token, target); code != http.StatusForbidden {
				t.Errorf("%s: %d %v, want 403", target, code, out)
			}
		}
	})
	t.Run("127.0.0.1 allowed, redirects elsewhere refused", func(t *testing.T) {
		srv := testserver.Start(t, "sqlite", func(c *config.Config) { c.MediaAPI.OutboundIPAllow = []string{"127.0.0.1/32"} })
		token := register(t, srv.URL)
		for _, to := range []string{
			"http://127.0.0.2:" + port + "/",
			"http://[::ffff:127.0.0.1]:" + port + "/",
			"http://169.254.169.254/latest/meta-data/",
		} {
			target := redirector.URL + "/?to=" + url.QueryEscape(to)
			if code, out := preview(t, srv.URL, token, target); code != http.StatusForbidden {
				t.Errorf("redirect to %s: %d %v, want 403", to, code, out)
			}
		}
	})
	if n := internalHits.Load(); n != 0 {
		t.Errorf("the internal server was reached %d times", n)
	}
}

func TestMediaSurvivesRestartAndSweepRemovesOldTempFiles(t *testing.T) {
	for _, engine := range []storage.Engine{storage.SQLite, storage.Postgres} {
		t.Run(string(engine), func(t *testing.T) {
			hs := testserver.Start(t, engine, nil)
			token := register(t, hs.URL)
			data := randomBytes(50_000)
			id := upload(t, hs.URL, token, "application/pdf", "report.pdf", data)
			orphan := filepath.Join(hs.Config.Global.DataDir, "media", "tmp", "upload-crashed")
			if err := os.WriteFile(orphan, []byte("partial"), 0o600); err != nil {
				t.Fatal(err)
			}
			old := time.Now().Add(-2 * time.Hour)
			_ = os.Chtimes(orphan, old, old)

			hs.Restart(t)
			resp, body := do(t, http.MethodGet, hs.URL+v1+"/download/localhost/"+id, token, nil, nil)
			if resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
				t.Fatalf("after restart: %d", resp.StatusCode)
			}
			if _, err := os.Stat(orphan); !os.IsNotExist(err) {
				t.Errorf("orphaned temp file survived the startup sweep: %v", err)
			}
		})
	}
}

func TestInterruptedUploadLeavesNothing(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		token := register(t, srv.URL)
		for _, framing := range []string{"Content-Length: 100000\r\n", "Transfer-Encoding: chunked\r\n"} {
			conn, err := net.Dial("tcp", strings.TrimPrefix(srv.URL, "http://"))
			if err != nil {
				t.Fatal(err)
			}
			head := "POST " + legacy + "/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token + "\r\n" + framing + "\r\n"
			part := bytes.Repeat([]byte("z"), 50_000)
			if strings.HasPrefix(framing, "Transfer") {
				part = append([]byte(fmt.Sprintf("%x\r\n", 100_000)), part...)
			}
			conn.Write([]byte(head))
			conn.Write(part)
			time.Sleep(200 * time.Millisecond) // the server is mid-body
			conn.Close()
		}
		deadline := time.Now().Add(20 * time.Second)
		for {
			blobs, temps := storeFiles(t, srv.Config)
			if len(blobs)+len(temps) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("files left behind: %v %v", blobs, temps)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if n := countRows(t, srv.HS.DB, `SELECT COUNT(*) FROM media`); n != 0 {
			t.Errorf("%d media rows left behind", n)
		}
	})
}
