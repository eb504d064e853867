package clientapi

import (
	"context"
	"time"

	"github.com/myelin-chat/myelin/storage"
)

// sweepInterval is how often expired state is cleared. Last-seen IPs are
// therefore kept at most ip_retention plus this long.
const sweepInterval = 10 * time.Minute

// runSweeper clears expired state every sweepInterval until ctx ends.
func (s *Server) runSweeper(ctx context.Context) {
	ticker := time.NewTicker(sweepInterval)
	defer ticker.Stop()
	for {
		if err := s.accounts.sweep(ctx, time.Now()); err != nil && ctx.Err() == nil {
			s.log.Warn("sweeping expired account state", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// sweep forgets last-seen IP addresses and user agents older than
// client_api.ip_retention (all of them when it is 0), and deletes expired
// UIA sessions (releasing their registration-token uses), login and
// OpenID tokens, single sign-on flows and confirmations, and
// shared-secret nonces.
func (a *Accounts) sweep(ctx context.Context, now time.Time) error {
	return a.db.Write(ctx, func(tx storage.Tx) error {
		cutoff := now.Add(-a.cfg.IPRetention.D()).UnixMilli()
		if a.cfg.IPRetention == 0 {
			cutoff = now.UnixMilli() + 1
		}
		if _, err := tx.Exec(ctx, `
			UPDATE devices SET last_seen_ip = NULL, last_seen_user_agent = NULL
			WHERE last_seen_ts < $1 AND (last_seen_ip IS NOT NULL OR last_seen_user_agent IS NOT NULL)`, cutoff); err != nil {
			return err
		}
		if err := expireUIASessions(ctx, tx, now); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM login_tokens WHERE expires_ts <= $1`, now.UnixMilli()); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM openid_tokens WHERE expires_ts <= $1`, now.UnixMilli()); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM sso_flows WHERE expires_ts <= $1`, now.UnixMilli()); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM sso_confirmations WHERE expires_ts <= $1`, now.UnixMilli()); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `DELETE FROM admin_register_nonces WHERE created_ts < $1`, now.Add(-adminNonceLifetime).UnixMilli())
		return err
	})
}
