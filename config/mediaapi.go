package config

import (
	"fmt"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// MediaAPI configures the media repository: uploads, downloads,
// thumbnails, URL previews and the remote media cache.
type MediaAPI struct {
	StorePath         string   `yaml:"store_path" doc:"Directory holding media files (content-addressed by SHA-256). Empty: <global.data_dir>/media."`
	MaxUploadBytes    int64    `yaml:"max_upload_bytes" doc:"Largest upload accepted, in bytes; advertised as m.upload.size. Larger uploads get 413 M_TOO_LARGE while streaming, whatever Content-Length says."`
	UserQuotaBytes    int64    `yaml:"user_quota_bytes" doc:"Total bytes of media each local user may upload. Uploads past it get 403 M_FORBIDDEN. 0: no quota."`
	MaxPendingUploads int      `yaml:"max_pending_uploads" doc:"Media IDs a user may hold from POST /_matrix/media/v1/create without uploading to them yet; more get 429 M_LIMIT_EXCEEDED."`
	UnusedExpiry      Duration `yaml:"unused_expiry" doc:"How long an ID from POST /_matrix/media/v1/create waits for its upload before it is deleted (unused_expires_at)."`
	MaxDownloadWait   Duration `yaml:"max_download_wait" doc:"Longest a download of media that is not uploaded yet waits (the cap on the client's timeout_ms) before 504 M_NOT_YET_UPLOADED."`
	// LegacyFreeze is empty by default: the freeze is the moment of the
	// first start, recorded in the database so it never moves.
	LegacyFreeze     string   `yaml:"legacy_freeze" doc:"Media uploaded (or remote media cached) at or after this RFC 3339 time is served only by the authenticated /_matrix/client/v1/media endpoints; the deprecated /_matrix/media/v3/download and /thumbnail answer 404 M_NOT_FOUND for it. Empty: the moment this server first started."`
	MaxImagePixels   int64    `yaml:"max_image_pixels" doc:"Images with more pixels (width x height, as their header says) are never decoded for thumbnails: 413 M_TOO_LARGE."`
	ThumbnailSizes   []string `yaml:"thumbnail_sizes" doc:"Thumbnail sizes generated on demand, each \"WIDTHxHEIGHT crop|scale\". A request gets the smallest size at least as big as it asked for."`
	MaxThumbnailJobs int      `yaml:"max_thumbnail_jobs" doc:"Thumbnails decoded at once; more requests wait. Bounds memory use."`

	// The download budget is a token bucket of bytes per authenticated
	// user (/_matrix/client/v1/media/download and /thumbnail) and per
	// client IP (the unauthenticated /_matrix/media/v3 ones).
	DownloadBytesPerSecond int64 `yaml:"download_bytes_per_second" doc:"Bytes per second each user (authenticated download and thumbnail endpoints) or client IP (legacy unauthenticated endpoints) may download on average. A download that would pass the budget gets 429 M_LIMIT_EXCEEDED with retry_after_ms before any byte is sent. 0: no budget."`
	DownloadBurstBytes     int64 `yaml:"download_burst_bytes" doc:"Bytes a user or client IP may download at once before download_bytes_per_second applies (the size of the bucket). A single file larger than this needs a full bucket."`

	URLPreviews        bool     `yaml:"url_previews" doc:"Serve /media/preview_url. Pages are fetched through a client that refuses private and internal addresses (see outbound_ip_deny)."`
	URLPreviewMaxBytes int64    `yaml:"url_preview_max_bytes" doc:"Most bytes of a page read for a URL preview; the rest is ignored."`
	URLPreviewTimeout  Duration `yaml:"url_preview_timeout" doc:"Time limit for fetching a page (and its og:image) for a URL preview."`
	URLPreviewCacheTTL Duration `yaml:"url_preview_cache_ttl" doc:"How long a URL preview is reused before the page is fetched again."`

	OutboundIPDeny  []string `yaml:"outbound_ip_deny" doc:"Extra IPs or CIDRs that URL previews and remote media fetches must never connect to, on top of the built-in list (loopback, private, link-local, CGNAT, multicast, 169.254.169.254, 6to4, NAT64, ULA and more)."`
	OutboundIPAllow []string `yaml:"outbound_ip_allow" doc:"IPs or CIDRs exempt from the built-in deny list (not from outbound_ip_deny), e.g. a federation peer on a private network."`

	RemoteMaxBytes      int64    `yaml:"remote_max_bytes" doc:"Largest remote media file fetched and cached, in bytes. Larger ones get 502 M_TOO_LARGE."`
	RemoteCacheTTL      Duration `yaml:"remote_cache_ttl" doc:"Cached remote media not downloaded for this long is deleted (and fetched again when asked for)."`
	RemoteCacheMaxBytes int64    `yaml:"remote_cache_max_bytes" doc:"Most bytes of cached remote media (with their thumbnails). After caching a file past it, the least recently downloaded remote files are deleted until the cache fits; local uploads never are. 0: no cap (remote_cache_ttl still applies)."`
	RemoteFetchTimeout  Duration `yaml:"remote_fetch_timeout" doc:"Time limit for fetching one remote media file."`
	// RemoteBaseURLs override server discovery per server (useful for
	// private federations).
	RemoteBaseURLs []string `yaml:"remote_base_urls" doc:"Where to fetch remote media from, as \"server_name=https://host:port\". Other servers are found by federation server discovery (without federation: https://<server_name>, port 8448 unless the name has one)."`
}

func (MediaAPI) Defaults() MediaAPI {
	return MediaAPI{
		MaxUploadBytes:    50 << 20,
		UserQuotaBytes:    10 << 30,
		MaxPendingUploads: 10,
		UnusedExpiry:      Duration(24 * time.Hour),
		MaxDownloadWait:   Duration(60 * time.Second),
		MaxImagePixels:    32_000_000,
		ThumbnailSizes:    []string{"32x32 crop", "96x96 crop", "320x240 scale", "640x480 scale", "800x600 scale"},
		MaxThumbnailJobs:  2,
		// About 36 GB an hour sustained, 1 GiB at once.
		DownloadBytesPerSecond: 10 << 20,
		DownloadBurstBytes:     1 << 30,
		URLPreviews:            true,
		URLPreviewMaxBytes:     2 << 20,
		URLPreviewTimeout:      Duration(10 * time.Second),
		URLPreviewCacheTTL:     Duration(24 * time.Hour),
		OutboundIPDeny:         []string{},
		OutboundIPAllow:        []string{},
		RemoteMaxBytes:         50 << 20,
		RemoteCacheTTL:         Duration(30 * 24 * time.Hour),
		RemoteFetchTimeout:     Duration(60 * time.Second),
		RemoteCacheMaxBytes:    10 << 30,
		RemoteBaseURLs:         []string{},
	}
}

// ThumbnailSize is one parsed entry of media_api.thumbnail_sizes.
type ThumbnailSize struct {
	Width, Height int
	Method        string // "crop" or "scale"
}

// ParseThumbnailSize parses "WIDTHxHEIGHT crop|scale".
func ParseThumbnailSize(s string) (ThumbnailSize, error) {
	dims, method, ok := strings.Cut(strings.TrimSpace(s), " ")
	w, h, ok2 := strings.Cut(dims, "x")
	if !ok || !ok2 {
		return ThumbnailSize{}, fmt.Errorf("%q is not \"WIDTHxHEIGHT crop|scale\"", s)
	}
	width, err1 := strconv.Atoi(w)
	height, err2 := strconv.Atoi(h)
	method = strings.TrimSpace(method)
	if err1 != nil || err2 != nil || width < 1 || height < 1 || width > 4096 || height > 4096 || (method != "crop" && method != "scale") {
		return ThumbnailSize{}, fmt.Errorf("%q is not \"WIDTHxHEIGHT crop|scale\" with sides 1 to 4096", s)
	}
	return ThumbnailSize{Width: width, Height: height, Method: method}, nil
}

// ParseRemoteBaseURL parses one "server_name=base URL" entry.
func ParseRemoteBaseURL(s string) (serverName string, base *url.URL, err error) {
	name, raw, ok := strings.Cut(s, "=")
	name = strings.TrimSpace(name)
	if !ok || !validServerName(name) {
		return "", nil, fmt.Errorf("%q is not server_name=URL", s)
	}
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", nil, fmt.Errorf("%q: the URL must be http(s)://host[:port]", s)
	}
	return name, u, nil
}

// LegacyFreezeTime parses LegacyFreeze; zero when it is empty.
func (m MediaAPI) LegacyFreezeTime() (time.Time, error) {
	if m.LegacyFreeze == "" {
		return time.Time{}, nil
	}
	return time.Parse(time.RFC3339, m.LegacyFreeze)
}

func (m MediaAPI) Validate() error {
	var errs []error
	if m.MaxUploadBytes < 1 {
		errs = append(errs, fieldError("media_api.max_upload_bytes", "must be positive", "e.g. 52428800 (50 MiB)"))
	}
	if m.UserQuotaBytes < 0 {
		errs = append(errs, fieldError("media_api.user_quota_bytes", "is negative", "use 0 for no quota, or a byte count"))
	}
	if m.MaxPendingUploads < 1 {
		errs = append(errs, fieldError("media_api.max_pending_uploads", "must be at least 1", "e.g. 10"))
	}
	if m.UnusedExpiry < Duration(time.Minute) {
		errs = append(errs, fieldError("media_api.unused_expiry", "must be at least 1m", "e.g. 24h"))
	}
	if m.MaxDownloadWait < 0 {
		errs = append(errs, fieldError("media_api.max_download_wait", "is negative", "e.g. 60s"))
	}
	if _, err := m.LegacyFreezeTime(); err != nil {
		errs = append(errs, fieldError("media_api.legacy_freeze", fmt.Sprintf("%q is not an RFC 3339 time", m.LegacyFreeze), "e.g. 2024-09-01T00:00:00Z, or empty for the first start"))
	}
	if m.MaxImagePixels < 1 {
		errs = append(errs, fieldError("media_api.max_image_pixels", "must be positive", "e.g. 32000000"))
	}
	for _, s := range m.ThumbnailSizes {
		if _, err := ParseThumbnailSize(s); err != nil {
			errs = append(errs, fieldError("media_api.thumbnail_sizes", err.Error(), "e.g. \"96x96 crop\" or \"640x480 scale\""))
		}
	}
	if m.MaxThumbnailJobs < 1 {
		errs = append(errs, fieldError("media_api.max_thumbnail_jobs", "must be at least 1", "e.g. 2"))
	}
	if m.DownloadBytesPerSecond < 0 {
		errs = append(errs, fieldError("media_api.download_bytes_per_second", "is negative", "use 0 for no budget, or e.g. 10485760 (10 MiB/s)"))
	}
	if m.DownloadBytesPerSecond > 0 && m.DownloadBurstBytes < 1 {
		errs = append(errs, fieldError("media_api.download_burst_bytes", "must be positive when download_bytes_per_second is set", "e.g. 1073741824 (1 GiB)"))
	}
	if m.URLPreviewMaxBytes < 1024 {
		errs = append(errs, fieldError("media_api.url_preview_max_bytes", "is below 1024", "e.g. 2097152 (2 MiB)"))
	}
	if m.URLPreviewTimeout <= 0 {
		errs = append(errs, fieldError("media_api.url_preview_timeout", "must be positive", "e.g. 10s"))
	}
	if m.URLPreviewCacheTTL < 0 {
		errs = append(errs, fieldError("media_api.url_preview_cache_ttl", "is negative", "e.g. 24h"))
	}
	for name, list := range map[string][]string{"outbound_ip_deny": m.OutboundIPDeny, "outbound_ip_allow": m.OutboundIPAllow} {
		for _, p := range list {
			if _, err := ParseIPOrPrefix(p); err != nil {
				errs = append(errs, fieldError("media_api."+name, fmt.Sprintf("%q is not an IP or CIDR", p), "write e.g. 10.1.2.3 or 192.168.0.0/16"))
			}
		}
	}
	if m.RemoteMaxBytes < 1 {
		errs = append(errs, fieldError("media_api.remote_max_bytes", "must be positive", "e.g. 52428800 (50 MiB)"))
	}
	if m.RemoteCacheTTL < Duration(time.Minute) {
		errs = append(errs, fieldError("media_api.remote_cache_ttl", "must be at least 1m", "e.g. 720h (30 days)"))
	}
	if m.RemoteCacheMaxBytes < 0 {
		errs = append(errs, fieldError("media_api.remote_cache_max_bytes", "is negative", "use 0 for no cap, or e.g. 10737418240 (10 GiB)"))
	}
	if m.RemoteFetchTimeout <= 0 {
		errs = append(errs, fieldError("media_api.remote_fetch_timeout", "must be positive", "e.g. 60s"))
	}
	for _, s := range m.RemoteBaseURLs {
		if _, _, err := ParseRemoteBaseURL(s); err != nil {
			errs = append(errs, fieldError("media_api.remote_base_urls", err.Error(), "e.g. example.org=https://matrix.example.org:8448"))
		}
	}
	return joinErrs(errs)
}

// ParseIPOrPrefix parses a CIDR or a bare address (as a one-address prefix).
func ParseIPOrPrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		return p.Masked(), err
	}
	a, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}
