package mediaapi_test

import (
	"bytes"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/storage"
)

// federationFront serves origin's federation media endpoints (behind
// auth) and everything else from origin's own handler, counting federation
// media requests.
func federationFront(t *testing.T, origin *testserver.Server, auth func(*http.Request) (string, error), hits *atomic.Int64) *httptest.Server {
	t.Helper()
	r := chi.NewRouter()
	r.Use(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			hits.Add(1)
			next.ServeHTTP(w, req)
		})
	})
	origin.HS.Media.FederationRoutes(r, auth)
	front := http.NewServeMux()
	front.Handle("/_matrix/federation/v1/media/", r)
	front.Handle("/", origin.HS.Handler())
	srv := httptest.NewServer(front)
	t.Cleanup(srv.Close)
	return srv
}

func acceptAnyOrigin(*http.Request) (string, error) { return "serverb", nil }

func TestRemoteMediaIsFetchedFromTheOriginAndCached(t *testing.T) {
	testserver.ForEachEngine(t, func(c *config.Config) { c.Global.ServerName = "servera" }, func(t *testing.T, a *testserver.Server) {
		var fedHits atomic.Int64
		front := federationFront(t, a, acceptAnyOrigin, &fedHits)
		engine := a.Config.Database.Engine
		b := testserver.Start(t, storage.Engine(engine), func(c *config.Config) {
			c.Global.ServerName = "serverb"
			c.MediaAPI.RemoteBaseURLs = []string{"servera=" + front.URL}
			c.MediaAPI.OutboundIPAllow = []string{"127.0.0.1"}
		})
		alice, bob := register(t, a.URL), register(t, b.URL)
		data := pngBytes(t, 400, 300)
		id := upload(t, a.URL, alice, "image/png", "cat.png", data)

		// Past B's freeze (its first start) the legacy endpoint never fetches.
		resp, _ := do(t, http.MethodGet, b.URL+legacy+"/download/servera/"+id, "", nil, nil)
		if resp.StatusCode != http.StatusNotFound || fedHits.Load() != 0 {
			t.Fatalf("legacy download of uncached remote media after the freeze: %d, origin hits %d", resp.StatusCode, fedHits.Load())
		}
		resp, body := do(t, http.MethodGet, b.URL+v1+"/download/servera/"+id, bob, nil, nil)
		if resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
			t.Fatalf("remote download: %d %s", resp.StatusCode, body[:min(len(body), 200)])
		}
		if got := resp.Header.Get("Content-Disposition"); got != `inline; filename="cat.png"` {
			t.Errorf("remote Content-Disposition = %q", got)
		}
		if fedHits.Load() != 1 {
			t.Fatalf("origin federation hits = %d, want 1", fedHits.Load())
		}
		// Cached: neither a second download nor a thumbnail asks the origin.
		_, body = do(t, http.MethodGet, b.URL+v1+"/download/servera/"+id, bob, nil, nil)
		resp, thumb := do(t, http.MethodGet, b.URL+v1+"/thumbnail/servera/"+id+"?width=96&height=96&method=crop", bob, nil, nil)
		if !bytes.Equal(body, data) || resp.StatusCode != http.StatusOK || fedHits.Load() != 1 {
			t.Errorf("cached download equal=%v, thumbnail %d, origin hits %d", bytes.Equal(body, data), resp.StatusCode, fedHits.Load())
		}
		if w, h, _ := decodeDims(t, thumb); w != 96 || h != 96 {
			t.Errorf("remote thumbnail %dx%d", w, h)
		}
		// Cached after the freeze: not on B's legacy endpoint.
		resp, _ = do(t, http.MethodGet, b.URL+legacy+"/download/servera/"+id, "", nil, nil)
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("legacy download of newly cached remote media: %d", resp.StatusCode)
		}
		// Unknown remote media is 404.
		resp, _ = do(t, http.MethodGet, b.URL+v1+"/download/servera/doesNotExist", bob, nil, nil)
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("unknown remote media: %d", resp.StatusCode)
		}
		// The federation thumbnail endpoint answers in multipart too.
		resp, body = do(t, http.MethodGet, front.URL+"/_matrix/federation/v1/media/thumbnail/"+id+"?width=32&height=32&method=crop", "", nil, nil)
		if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte("Content-Type: image/png")) {
			t.Errorf("federation thumbnail: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
	})
}

func TestRemoteFetchFallsBackToLegacyEndpoint(t *testing.T) {
	// Origin without the federation media endpoints (404 M_UNRECOGNIZED)
	// and with media from before its freeze.
	a := testserver.Start(t, "sqlite", func(c *config.Config) {
		c.Global.ServerName = "servera"
		c.MediaAPI.LegacyFreeze = time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	})
	b := testserver.Start(t, "sqlite", func(c *config.Config) {
		c.Global.ServerName = "serverb"
		c.MediaAPI.RemoteBaseURLs = []string{"servera=" + a.URL}
		c.MediaAPI.OutboundIPAllow = []string{"127.0.0.1"}
	})
	alice, bob := register(t, a.URL), register(t, b.URL)
	data := randomBytes(20_000)
	id := upload(t, a.URL, alice, "application/zip", "archive.zip", data)
	resp, body := do(t, http.MethodGet, b.URL+v1+"/download/servera/"+id, bob, nil, nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
		t.Fatalf("fallback download: %d", resp.StatusCode)
	}
	if got := resp.Header.Get("Content-Disposition"); got != `attachment; filename="archive.zip"` {
		t.Errorf("Content-Disposition = %q", got)
	}
}

func TestRemoteFetchIsRefusedToInternalAddressesByDefault(t *testing.T) {
	a := testserver.Start(t, "sqlite", func(c *config.Config) { c.Global.ServerName = "servera" })
	b := testserver.Start(t, "sqlite", func(c *config.Config) {
		c.Global.ServerName = "serverb"
		c.MediaAPI.RemoteBaseURLs = []string{"servera=" + a.URL}
	})
	bob := register(t, b.URL)
	resp, body := do(t, http.MethodGet, b.URL+v1+"/download/servera/abcdef", bob, nil, nil)
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("remote fetch from 127.0.0.1 without an allow entry: %d %s", resp.StatusCode, body)
	}
}

func TestFederationMediaRequiresOriginAuthentication(t *testing.T) {
	a := testserver.Start(t, "sqlite", func(c *config.Config) { c.Global.ServerName = "servera" })
	var hits atomic.Int64
	front := federationFront(t, a, func(*http.Request) (string, error) {
		return "", mxerr.Wrap(errors.New("no signature"), mxerr.Unauthorized, "missing X-Matrix authorization")
	}, &hits)
	alice := register(t, a.URL)
	id := upload(t, a.URL, alice, "text/plain", "", []byte("secret"))
	resp, body := do(t, http.MethodGet, front.URL+"/_matrix/federation/v1/media/download/"+id, "", nil, nil)
	if resp.StatusCode != http.StatusUnauthorized || bytes.Contains(body, []byte("secret")) {
		t.Errorf("unauthenticated federation download: %d %s", resp.StatusCode, body)
	}
	// Without FederationRoutes (today's wiring) the endpoint is unknown,
	// which sends peers to the legacy endpoint.
	resp, body = do(t, http.MethodGet, a.URL+"/_matrix/federation/v1/media/download/"+id, "", nil, nil)
	if resp.StatusCode != http.StatusNotFound || errcode(t, body) != "M_UNRECOGNIZED" {
		t.Errorf("unwired federation endpoint: %d %s", resp.StatusCode, body)
	}
}

// Before the legacy freeze (a future media_api.legacy_freeze) the
// deprecated endpoints fetch remote media like the v1 ones, honouring
// allow_remote=false; past it they serve only what was cached before.
func TestLegacyEndpointsFetchRemoteMediaOnlyBeforeTheFreeze(t *testing.T) {
	testserver.ForEachEngine(t, func(c *config.Config) { c.Global.ServerName = "servera" }, func(t *testing.T, a *testserver.Server) {
		var fedHits atomic.Int64
		front := federationFront(t, a, acceptAnyOrigin, &fedHits)
		engine := storage.Engine(a.Config.Database.Engine)
		b := testserver.Start(t, engine, func(c *config.Config) {
			c.Global.ServerName = "serverb"
			c.MediaAPI.RemoteBaseURLs = []string{"servera=" + front.URL}
			c.MediaAPI.OutboundIPAllow = []string{"127.0.0.1"}
			c.MediaAPI.LegacyFreeze = time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
		})
		alice := register(t, a.URL)
		data := pngBytes(t, 400, 300)
		id := upload(t, a.URL, alice, "image/png", "Ĉu ne.png", data)

		resp, _ := do(t, http.MethodGet, b.URL+legacy+"/download/servera/"+id+"?allow_remote=false", "", nil, nil)
		if resp.StatusCode != http.StatusNotFound || fedHits.Load() != 0 {
			t.Fatalf("legacy download with allow_remote=false: %d, origin hits %d", resp.StatusCode, fedHits.Load())
		}
		resp, body := do(t, http.MethodGet, b.URL+legacy+"/download/servera/"+id, "", nil, nil)
		if resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
			t.Fatalf("legacy download of remote media before the freeze: %d %s", resp.StatusCode, body[:min(len(body), 200)])
		}
		if got := resp.Header.Get("Content-Disposition"); got != `inline; filename="_u ne.png"; filename*=UTF-8''%C4%88u%20ne.png` {
			t.Errorf("Content-Disposition = %q", got)
		}
		resp, thumb := do(t, http.MethodGet, b.URL+legacy+"/thumbnail/servera/"+id+"?width=32&height=32&method=scale", "", nil, nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("legacy thumbnail of remote png: %d %s", resp.StatusCode, thumb)
		}
		if w, _, _ := decodeDims(t, thumb); w != 320 { // the smallest scale size, 320x240
			t.Errorf("legacy remote thumbnail width %d", w)
		}
	})
}

// Which answers of the federation media endpoint send the fetch to the
// deprecated endpoint: an unknown endpoint, however an older server words
// it; never a Matrix error about the media itself.
func TestRemoteFetchFallbackOnlyForUnknownEndpoints(t *testing.T) {
	cases := []struct {
		name           string
		status         int
		body           string
		wantFallback   bool
		wantStatusAtB  int
		wantErrcodeAtB string
	}{
		{"404 M_UNRECOGNIZED", 404, `{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}`, true, 200, ""},
		{"400 M_UNRECOGNIZED (older servers)", 400, `{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}`, true, 200, ""},
		{"404 plain text router answer", 404, `404 page not found`, true, 200, ""},
		{"400 plain text", 400, `unknown route`, true, 200, ""},
		{"404 M_NOT_FOUND is about the media", 404, `{"errcode":"M_NOT_FOUND","error":"no such media"}`, false, 404, "M_NOT_FOUND"},
		{"502 M_TOO_LARGE", 502, `{"errcode":"M_TOO_LARGE","error":"too big"}`, false, 502, "M_TOO_LARGE"},
		{"403 M_FORBIDDEN", 403, `{"errcode":"M_FORBIDDEN","error":"no"}`, false, 502, "M_UNKNOWN"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var legacyHits atomic.Int64
			origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				switch r.URL.Path {
				case "/_matrix/federation/v1/media/download/someMedia":
					w.WriteHeader(tc.status)
					_, _ = w.Write([]byte(tc.body))
				case "/_matrix/media/v3/download/servera/someMedia":
					legacyHits.Add(1)
					if r.URL.Query().Get("allow_remote") != "false" {
						t.Errorf("legacy fallback without allow_remote=false: %s", r.URL)
					}
					w.Header().Set("Content-Type", "text/plain")
					_, _ = w.Write([]byte("legacy bytes"))
				default:
					http.NotFound(w, r)
				}
			}))
			defer origin.Close()
			b := testserver.Start(t, "sqlite", func(c *config.Config) {
				c.Global.ServerName = "serverb"
				c.MediaAPI.RemoteBaseURLs = []string{"servera=" + origin.URL}
				c.MediaAPI.OutboundIPAllow = []string{"127.0.0.1"}
			})
			bob := register(t, b.URL)
			resp, body := do(t, http.MethodGet, b.URL+v1+"/download/servera/someMedia", bob, nil, nil)
			if resp.StatusCode != tc.wantStatusAtB {
				t.Fatalf("download: %d %s", resp.StatusCode, body)
			}
			if tc.wantErrcodeAtB != "" && errcode(t, body) != tc.wantErrcodeAtB {
				t.Errorf("errcode %s, want %s", body, tc.wantErrcodeAtB)
			}
			if got := legacyHits.Load() == 1; got != tc.wantFallback {
				t.Errorf("legacy endpoint asked: %v, want %v", got, tc.wantFallback)
			}
			if tc.wantFallback && string(body) != "legacy bytes" {
				t.Errorf("body %q", body)
			}
		})
	}
}
