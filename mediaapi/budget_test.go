package mediaapi_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
)

// retryAfter returns retry_after_ms of a 429 body (0 when absent).
func retryAfter(t *testing.T, body []byte) int64 {
	t.Helper()
	var e struct {
		RetryAfterMS int64 `json:"retry_after_ms"`
	}
	_ = json.Unmarshal(body, &e)
	return e.RetryAfterMS
}

// Security case 27: downloads are charged to a byte budget per user (and
// per client IP on the legacy endpoints); past it, 429 before any byte.
func TestDownloadByteBudget(t *testing.T) {
	srv := testserver.Start(t, "sqlite", func(c *config.Config) {
		c.MediaAPI.DownloadBurstBytes = 30_000
		c.MediaAPI.DownloadBytesPerSecond = 1 // effectively no refill
		c.MediaAPI.LegacyFreeze = time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	})
	alice, bob := register(t, srv.URL), register(t, srv.URL)
	data := randomBytes(20_000)
	id := upload(t, srv.URL, alice, "application/octet-stream", "blob.bin", data)
	url := srv.URL + v1 + "/download/localhost/" + id

	resp, body := do(t, http.MethodGet, url, alice, nil, nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
		t.Fatalf("first download: %d", resp.StatusCode)
	}
	// 10 000 bytes left: a range of 5 000 is charged as 5 000 and fits.
	resp, body = do(t, http.MethodGet, url, alice, nil, map[string]string{"Range": "bytes=1000-5999"})
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, data[1000:6000]) {
		t.Fatalf("range download within the budget: %d (%d bytes)", resp.StatusCode, len(body))
	}
	// 5 000 left: the whole file does not fit.
	resp, body = do(t, http.MethodGet, url, alice, nil, nil)
	if resp.StatusCode != http.StatusTooManyRequests || errcode(t, body) != "M_LIMIT_EXCEEDED" {
		t.Fatalf("download past the budget: %d %s", resp.StatusCode, body[:min(len(body), 200)])
	}
	// 15 000 bytes missing at 1 byte/s.
	if ms := retryAfter(t, body); ms < 14_000_000 || ms > 15_000_000 {
		t.Errorf("retry_after_ms = %d, want about 15000000", ms)
	}
	if bytes.Contains(body, data[:64]) {
		t.Error("the refused download carried file bytes")
	}
	// Refusals charge nothing, but the budget stays short.
	resp, body = do(t, http.MethodGet, url, alice, nil, nil)
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("repeated download past the budget: %d", resp.StatusCode)
	}
	// Another user has a budget of their own.
	resp, body = do(t, http.MethodGet, url, bob, nil, nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
		t.Errorf("other user's download: %d", resp.StatusCode)
	}
	// The unauthenticated legacy endpoint is budgeted per client IP.
	legacyURL := srv.URL + legacy + "/download/localhost/" + id
	resp, body = do(t, http.MethodGet, legacyURL, "", nil, nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
		t.Fatalf("first legacy download: %d", resp.StatusCode)
	}
	resp, body = do(t, http.MethodGet, legacyURL, "", nil, nil)
	if resp.StatusCode != http.StatusTooManyRequests || errcode(t, body) != "M_LIMIT_EXCEEDED" || retryAfter(t, body) <= 0 {
		t.Errorf("second legacy download from the same IP: %d %s", resp.StatusCode, body[:min(len(body), 200)])
	}
}

// download_bytes_per_second 0 disables the budget.
func TestDownloadByteBudgetDisabled(t *testing.T) {
	srv := testserver.Start(t, "sqlite", func(c *config.Config) { c.MediaAPI.DownloadBytesPerSecond, c.MediaAPI.DownloadBurstBytes = 0, 30_000 })
	alice := register(t, srv.URL)
	data := randomBytes(20_000)
	id := upload(t, srv.URL, alice, "application/octet-stream", "", data)
	for i := 0; i < 5; i++ {
		if resp, _ := do(t, http.MethodGet, srv.URL+v1+"/download/localhost/"+id, alice, nil, nil); resp.StatusCode != http.StatusOK {
			t.Fatalf("download %d with the budget disabled: %d", i, resp.StatusCode)
		}
	}
}
