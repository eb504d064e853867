package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/myelin-chat/myelin/storage"
)

// maxLocalpartSuffix bounds the numbers tried after a taken localpart.
const maxLocalpartSuffix = 100

// errSSOMappingRace says another login of the same subject mapped it
// first, between this one's read and its write: read it again.
var errSSOMappingRace = errors.New("the subject was mapped concurrently")

// ssoAccount returns the account of the provider's subject, creating it
// on a first login when that is allowed, and runs then in the same
// transaction (nothing is kept if then fails).
//
// The account is found by (provider, sub) in sso_users, never by name:
// a user renamed at the provider keeps their account, and a new upstream
// user whose name matches an existing local account gets their own.
// A first login creates the account when client_api.registration is
// open or the provider has create_users. Its localpart comes from the
// localpart claim (else sub), mapped as the spec suggests; when that is
// taken (or reserved by an application service), the numbers 2, 3, …
// are appended, up to maxLocalpartSuffix, after which the login is
// refused with a page saying so. The display name claim, when present,
// becomes the new account's display name (later logins leave it alone:
// the user may have changed it since).
//
// Spec: client-server-api, "Handling the callback from the
// Authentication server", steps 1–2; security case 30 (a deactivated
// account is refused).
func (s *Server) ssoAccount(ctx context.Context, p *oidcProvider, claims map[string]any,
	then func(tx storage.Tx, localpart string) error) (string, error) {
	subject := claims["sub"].(string) // checked by verifyIDToken
	for attempt := 0; ; attempt++ {
		localpart, err := s.ssoAccountOnce(ctx, p, subject, claims, then)
		if errors.Is(err, errSSOMappingRace) && attempt < 3 {
			continue
		}
		return localpart, err
	}
}

func (s *Server) ssoAccountOnce(ctx context.Context, p *oidcProvider, subject string, claims map[string]any,
	then func(tx storage.Tx, localpart string) error) (string, error) {
	mayCreate := s.cfg.ClientAPI.Registration == registrationOpen || p.cfg.CreateUsers
	candidates := s.ssoLocalparts(p, subject, claims)
	displayName := ssoDisplayName(p, claims)
	var localpart string
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		localpart = ""
		err := tx.QueryRow(ctx, `SELECT localpart FROM sso_users WHERE idp_id = $1 AND subject = $2`,
			p.cfg.ID, subject).Scan(&localpart)
		switch {
		case err == nil:
			acct, ok, err := lookupAccount(ctx, tx, localpart)
			if err != nil {
				return err
			}
			if !ok || acct.deactivated {
				return &ssoRefusal{http.StatusForbidden, "Your account " + s.userID(localpart) + " has been deactivated."}
			}
			return then(tx, localpart)
		case !storage.IsNoRows(err):
			return err
		}
		if !mayCreate {
			return &ssoRefusal{http.StatusForbidden, "There is no account on this server for you, and this server does not create accounts through " + p.cfg.Name + ". Ask the server's administrator."}
		}
		now := time.Now()
		for _, candidate := range candidates {
			// ON CONFLICT rather than a caught unique violation: on
			// PostgreSQL a failed statement would end the transaction.
			res, err := tx.Exec(ctx, `
				INSERT INTO accounts (localpart, password_hash, created_ts, is_guest, is_admin)
				VALUES ($1, '', $2, false, false) ON CONFLICT (localpart) DO NOTHING`, candidate, now.UnixMilli())
			if err != nil {
				return err
			}
			if n, err := res.RowsAffected(); err != nil {
				return err
			} else if n == 1 {
				localpart = candidate
				break
			}
		}
		if localpart == "" {
			return &ssoRefusal{http.StatusConflict, "Every user ID this server could make for you is taken. Ask the server's administrator."}
		}
		res, err := tx.Exec(ctx, `
			INSERT INTO sso_users (idp_id, subject, localpart, created_ts) VALUES ($1, $2, $3, $4)
			ON CONFLICT (idp_id, subject) DO NOTHING`, p.cfg.ID, subject, localpart, now.UnixMilli())
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return errSSOMappingRace // rolls the new account back
		}
		if displayName != "" {
			value, _ := json.Marshal(displayName)
			if _, err := tx.Exec(ctx, `INSERT INTO profiles (localpart, updated_ts) VALUES ($1, $2)`, localpart, now.UnixMilli()); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `INSERT INTO profile_fields (localpart, field, value) VALUES ($1, $2, $3)`,
				localpart, fieldDisplayName, string(value)); err != nil {
				return err
			}
		}
		return then(tx, localpart)
	})
	if err != nil {
		return "", err
	}
	return localpart, nil
}

// ssoLocalparts lists the localparts a new account of subject may take,
// in order of preference: the mapped claim, then it with 2, 3, …
// appended, leaving out invalid ones and those an application service
// reserves.
func (s *Server) ssoLocalparts(p *oidcProvider, subject string, claims map[string]any) []string {
	base := ""
	if v, ok := claims[p.cfg.LocalpartClaimName()].(string); ok {
		base = mapToLocalpart(v)
	}
	if base == "" {
		base = mapToLocalpart(subject)
	}
	// Room for the server name and a suffix within 255 bytes.
	room := 255 - len(s.userID("")) - len(strconv.Itoa(maxLocalpartSuffix))
	if len(base) > room {
		base = strings.TrimRight(base[:room], "=")
	}
	var out []string
	for i := 1; i <= maxLocalpartSuffix; i++ {
		candidate := base
		if i > 1 {
			candidate = fmt.Sprintf("%s%d", base, i)
		}
		if s.accounts.validateLocalpart(candidate) != nil || s.exclusiveUser(s.userID(candidate), nil) != nil {
			continue
		}
		out = append(out, candidate)
	}
	return out
}

// mapToLocalpart maps a provider's username onto the localpart
// character set as the spec suggests: A-Z lower-cased, and any other
// byte outside a-z 0-9 . _ - / +, and = itself, written =xx.
// Spec: appendices, "Mapping from other character sets".
func mapToLocalpart(name string) string {
	var b strings.Builder
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'A' && c <= 'Z':
			b.WriteByte(c + 'a' - 'A')
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', strings.IndexByte("._-/+", c) >= 0:
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "=%02x", c)
		}
	}
	return b.String()
}

// ssoDisplayName reads the display name claim: control characters
// (which a PostgreSQL text column may refuse) dropped, spaces trimmed,
// cut to the profile's length limit; "" for none.
func ssoDisplayName(p *oidcProvider, claims map[string]any) string {
	claim := p.cfg.DisplayNameClaimName()
	if claim == "" {
		return ""
	}
	v, _ := claims[claim].(string)
	v = strings.TrimSpace(strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == utf8.RuneError {
			return -1
		}
		return r
	}, v))
	if utf8.RuneCountInString(v) > maxDisplayNameLength {
		v = string([]rune(v)[:maxDisplayNameLength])
	}
	return v
}
