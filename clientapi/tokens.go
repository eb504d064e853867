package clientapi

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

var _ authn.Verifier = (*Server)(nil)

// Token prefixes make leaked tokens recognisable to secret scanners.
const (
	accessTokenPrefix  = "mya_"
	refreshTokenPrefix = "myr_"
	loginTokenPrefix   = "myl_"
)

// newToken returns a random token with 256 bits of entropy.
func newToken(prefix string) string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return prefix + base64.RawURLEncoding.EncodeToString(b[:])
}

// hashToken is how tokens are stored: only their SHA-256 is kept.
func hashToken(token string) []byte {
	sum := sha256.Sum256([]byte(token))
	return sum[:]
}

// lastSeenInterval bounds how often a session's last-seen time and IP are
// written: at most once per interval, off the request path.
const lastSeenInterval = time.Minute

// lastSeenCache remembers when each session's last-seen row was written.
type lastSeenCache struct {
	mu      sync.Mutex
	written map[int64]time.Time // guarded by mu
}

// VerifyAccessToken resolves an access token to its device.
//
// Spec: client-server-api, "Using access tokens" and "Soft logout": an
// expired token gets M_UNKNOWN_TOKEN with soft_logout true.
func (s *Server) VerifyAccessToken(ctx context.Context, token string, r *http.Request) (*authn.Device, error) {
	if reg := s.appservices.ByToken(token); reg != nil {
		return s.verifyAppService(ctx, reg, r)
	}
	if !strings.HasPrefix(token, accessTokenPrefix) {
		return nil, mxerr.New(mxerr.UnknownToken, "unknown access token").With("soft_logout", false)
	}
	now := time.Now()
	// The token is copied to a stack buffer to be hashed: []byte(token)
	// would allocate (a token is longer than the conversion's 32-byte
	// stack buffer).
	var buf [64]byte
	hash := sha256.Sum256(append(buf[:0], token...))
	if e, ok := s.accounts.tokens.get(hash, now); ok {
		if e.expires != 0 && now.UnixMilli() >= e.expires {
			return nil, mxerr.New(mxerr.UnknownToken, "access token has expired").With("soft_logout", true)
		}
		d := e.device
		if r != nil {
			s.noteLastSeen(d.SessionID, strings.TrimPrefix(d.UserID, "@"), d.DeviceID, r, now)
		}
		return &d, nil
	}
	gen, mark, keep := s.accounts.tokens.generation()
	key := hash // escapes into the query's arguments: only on this path
	var (
		d           authn.Device
		expires     int64
		deactivated bool
		prevRefresh bool
	)
	err := s.db.Reader().QueryRow(ctx, `
		SELECT s.session_id, s.localpart, s.device_id, s.access_expires_ts, a.deactivated, a.is_guest,
			s.prev_refresh_token_hash IS NOT NULL
		FROM sessions s JOIN accounts a ON a.localpart = s.localpart
		WHERE s.access_token_hash = $1`, key[:]).
		Scan(&d.SessionID, &d.UserID, &d.DeviceID, &expires, &deactivated, &d.IsGuest, &prevRefresh)
	if storage.IsNoRows(err) {
		return nil, mxerr.New(mxerr.UnknownToken, "unknown access token").With("soft_logout", false)
	}
	if err != nil {
		return nil, err
	}
	if deactivated {
		return nil, mxerr.New(mxerr.UnknownToken, "this account has been deactivated").With("soft_logout", false)
	}
	if expires != 0 && now.UnixMilli() >= expires {
		return nil, mxerr.New(mxerr.UnknownToken, "access token has expired").With("soft_logout", true)
	}
	if prevRefresh {
		// Spec: client-server-api, "Refreshing access tokens": the old
		// refresh token is revoked once the new access token is used.
		err := s.db.Write(ctx, func(tx storage.Tx) error {
			_, err := tx.Exec(ctx, `UPDATE sessions SET prev_refresh_token_hash = NULL WHERE session_id = $1`, d.SessionID)
			return err
		})
		if err != nil {
			return nil, err
		}
	}
	d.UserID = s.userID(d.UserID)
	if keep && !prevRefresh {
		// A token whose session still holds the previous refresh token
		// is not cached: its first use must revoke that (above).
		s.accounts.tokens.put(gen, hash, tokenEntry{device: d, expires: expires, readAt: now, mark: mark})
	}
	if r != nil {
		s.noteLastSeen(d.SessionID, strings.TrimPrefix(d.UserID, "@"), d.DeviceID, r, now)
	}
	return &d, nil
}

// noteLastSeen records the device's last-seen time, IP and user agent, at
// most once per lastSeenInterval per session, without delaying the request.
func (s *Server) noteLastSeen(sessionID int64, _ string, deviceID string, r *http.Request, now time.Time) {
	s.lastSeen.mu.Lock()
	if s.lastSeen.written == nil {
		s.lastSeen.written = map[int64]time.Time{}
	}
	if now.Sub(s.lastSeen.written[sessionID]) < lastSeenInterval {
		s.lastSeen.mu.Unlock()
		return
	}
	s.lastSeen.written[sessionID] = now
	s.lastSeen.mu.Unlock()

	var ip *string // NULL: with ip_retention 0, addresses are not kept at all
	if s.cfg.ClientAPI.IPRetention > 0 {
		addr := s.clientIP.ClientIP(r)
		ip = &addr
	}
	ua := r.UserAgent()
	if len(ua) > 512 {
		ua = ua[:512]
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err := s.db.Write(ctx, func(tx storage.Tx) error {
			_, err := tx.Exec(ctx, `
				UPDATE devices SET last_seen_ts = $1, last_seen_ip = $2, last_seen_user_agent = $3
				WHERE device_id = $4 AND localpart = (SELECT localpart FROM sessions WHERE session_id = $5)`,
				now.UnixMilli(), ip, ua, deviceID, sessionID)
			return err
		})
		if err != nil {
			s.log.Warn("recording device last-seen", "err", err)
		}
	}()
}

// userID makes a full user ID from a localpart.
func (s *Server) userID(localpart string) string { return "@" + localpart + ":" + s.serverName }

// localpart returns the localpart of a user ID on this server, or "" if
// the ID is not a local user.
func (s *Server) localpart(userID string) string { return localpartOn(userID, s.serverName) }

// localpartOn returns the localpart of a user ID on serverName, or "" if
// the ID is not a user of that server.
func localpartOn(userID, serverName string) string {
	if !strings.HasPrefix(userID, "@") {
		return ""
	}
	local, server, ok := strings.Cut(userID[1:], ":")
	if !ok || server != serverName || local == "" {
		return ""
	}
	return local
}
