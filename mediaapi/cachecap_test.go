package mediaapi_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/storage"
)

// blobPath is where cfg's store keeps data.
func blobPath(cfg *config.Config, data []byte) string {
	sum := sha256.Sum256(data)
	h := hex.EncodeToString(sum[:])
	root := cfg.MediaAPI.StorePath
	if root == "" {
		root = filepath.Join(cfg.Global.DataDir, "media")
	}
	return filepath.Join(root, h[0:2], h[2:4], h)
}

func TestRemoteCacheCapEvictsLeastRecentlyAccessed(t *testing.T) {
	testserver.ForEachEngine(t, func(c *config.Config) { c.Global.ServerName = "servera" }, func(t *testing.T, a *testserver.Server) {
		var fedHits atomic.Int64
		front := federationFront(t, a, acceptAnyOrigin, &fedHits)
		b := testserver.Start(t, storage.Engine(a.Config.Database.Engine), func(c *config.Config) {
			c.Global.ServerName = "serverb"
			c.MediaAPI.RemoteBaseURLs = []string{"servera=" + front.URL}
			c.MediaAPI.OutboundIPAllow = []string{"127.0.0.1"}
			c.MediaAPI.RemoteCacheMaxBytes = 45_000 // two 20 000-byte files, not three
		})
		alice, bob := register(t, a.URL), register(t, b.URL)
		files := [][]byte{randomBytes(20_000), randomBytes(20_000), randomBytes(20_000)}
		ids := make([]string, len(files))
		for i, data := range files {
			ids[i] = upload(t, a.URL, alice, "application/octet-stream", "", data)
		}
		// A local upload on B, larger than the cap: never evicted.
		localData := randomBytes(50_000)
		localID := upload(t, b.URL, bob, "application/octet-stream", "", localData)

		get := func(i int, allowRemote bool) int {
			t.Helper()
			u := b.URL + v1 + "/download/servera/" + ids[i]
			if !allowRemote {
				u += "?allow_remote=false"
			}
			resp, body := do(t, http.MethodGet, u, bob, nil, nil)
			if resp.StatusCode == http.StatusOK && !bytes.Equal(body, files[i]) {
				t.Fatalf("file %d: wrong bytes", i)
			}
			return resp.StatusCode
		}
		wantHits := func(n int64) {
			t.Helper()
			if got := fedHits.Load(); got != n {
				t.Fatalf("origin fetches = %d, want %d", got, n)
			}
		}

		if get(0, true) != 200 || get(1, true) != 200 {
			t.Fatal("caching files 0 and 1 failed")
		}
		wantHits(2)
		// File 0 is downloaded again later than file 1 was cached.
		time.Sleep(1100 * time.Millisecond)
		if get(0, true) != 200 {
			t.Fatal("cached file 0")
		}
		wantHits(2)
		// Caching file 2 passes the cap: file 1, the least recently
		// accessed, goes.
		if get(2, true) != 200 {
			t.Fatal("caching file 2 failed")
		}
		wantHits(3)
		if code := get(1, false); code != http.StatusNotFound {
			t.Fatalf("evicted file 1 without allow_remote: %d, want 404", code)
		}
		if get(0, false) != 200 || get(2, false) != 200 {
			t.Fatal("files 0 and 2 should still be cached")
		}
		wantHits(3)
		// The evicted file was cached moments ago, so its bytes stay until
		// they are old enough to be sure no identical upload is in flight.
		// Age every stored file; the next eviction removes what it evicts.
		blobs, _ := storeFiles(t, b.Config)
		old := time.Now().Add(-2 * time.Hour)
		for _, p := range blobs {
			if err := os.Chtimes(p, old, old); err != nil {
				t.Fatal(err)
			}
		}
		// Asked for again, file 1 is fetched from the origin; that evicts
		// file 0 (accessed before file 2 was cached).
		if get(1, true) != 200 {
			t.Fatal("re-fetching file 1 failed")
		}
		wantHits(4)
		if code := get(0, false); code != http.StatusNotFound {
			t.Errorf("file 0 after file 1 came back: %d, want 404", code)
		}
		if _, err := os.Stat(blobPath(b.Config, files[0])); !os.IsNotExist(err) {
			t.Errorf("evicted file 0 is still on disk (%v)", err)
		}
		for _, i := range []int{1, 2} {
			if _, err := os.Stat(blobPath(b.Config, files[i])); err != nil {
				t.Errorf("cached file %d: %v", i, err)
			}
		}
		resp, body := do(t, http.MethodGet, b.URL+v1+"/download/serverb/"+localID, bob, nil, nil)
		if resp.StatusCode != http.StatusOK || !bytes.Equal(body, localData) {
			t.Errorf("local upload after evictions: %d", resp.StatusCode)
		}
	})
}

// Thumbnails of remote media count towards the cap: storing one evicts.
func TestRemoteCacheCapCountsThumbnails(t *testing.T) {
	a := testserver.Start(t, "sqlite", func(c *config.Config) { c.Global.ServerName = "servera" })
	var fedHits atomic.Int64
	front := federationFront(t, a, acceptAnyOrigin, &fedHits)
	blob, img := randomBytes(20_000), pngBytes(t, 400, 300)
	b := testserver.Start(t, "sqlite", func(c *config.Config) {
		c.Global.ServerName = "serverb"
		c.MediaAPI.RemoteBaseURLs = []string{"servera=" + front.URL}
		c.MediaAPI.OutboundIPAllow = []string{"127.0.0.1"}
		c.MediaAPI.RemoteCacheMaxBytes = int64(len(blob)+len(img)) + 16 // both files, no thumbnail
	})
	alice, bob := register(t, a.URL), register(t, b.URL)
	blobID := upload(t, a.URL, alice, "application/octet-stream", "", blob)
	imgID := upload(t, a.URL, alice, "image/png", "", img)
	for _, id := range []string{blobID, imgID} {
		if resp, _ := do(t, http.MethodGet, b.URL+v1+"/download/servera/"+id, bob, nil, nil); resp.StatusCode != http.StatusOK {
			t.Fatalf("caching %s: %d", id, resp.StatusCode)
		}
	}
	if resp, _ := do(t, http.MethodGet, b.URL+v1+"/download/servera/"+blobID+"?allow_remote=false", bob, nil, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("both files fit the cap, but the first is gone: %d", resp.StatusCode)
	}
	resp, _ := do(t, http.MethodGet, b.URL+v1+"/thumbnail/servera/"+imgID+"?width=96&height=96&method=crop", bob, nil, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("remote thumbnail: %d", resp.StatusCode)
	}
	if resp, _ := do(t, http.MethodGet, b.URL+v1+"/download/servera/"+blobID+"?allow_remote=false", bob, nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("after the thumbnail passed the cap, the least recently used file: %d, want 404", resp.StatusCode)
	}
	if resp, _ := do(t, http.MethodGet, b.URL+v1+"/download/servera/"+imgID+"?allow_remote=false", bob, nil, nil); resp.StatusCode != http.StatusOK {
		t.Errorf("the thumbnailed file itself: %d, want 200", resp.StatusCode)
	}
}
