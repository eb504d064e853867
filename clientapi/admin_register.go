package clientapi

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"net/http"
	"time"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// Shared-secret registration, the Synapse admin API that Complement and
// admin tools use to create accounts: GET returns a nonce; POST carries
// an HMAC-SHA1, keyed with client_api.registration_shared_secret, of
// nonce NUL username NUL password NUL ("admin" | "notadmin"). It works
// whatever the registration mode. Nonces are single-use and expire after
// adminNonceLifetime; they live in the database so the GET and the POST
// may reach different replicas.

const adminNonceLifetime = time.Minute

func (s *Server) sharedSecretEnabled() error {
	if s.cfg.ClientAPI.RegistrationSharedSecret == "" {
		return mxerr.New(mxerr.Forbidden, "shared-secret registration is not enabled")
	}
	return nil
}

// adminRegisterNonce answers GET /_synapse/admin/v1/register.
func (s *Server) adminRegisterNonce(w http.ResponseWriter, r *http.Request) error {
	if err := s.sharedSecretEnabled(); err != nil {
		return err
	}
	if err := s.registerLimit.Allow(s.clientIP.ClientIP(r)); err != nil {
		return err
	}
	nonce := randomString(32, localpartAlphabet)
	ctx := r.Context()
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO admin_register_nonces (nonce, created_ts) VALUES ($1, $2)`, nonce, time.Now().UnixMilli())
		return err
	})
	if err != nil {
		return err
	}
	return httpx.OK(w, map[string]string{"nonce": nonce})
}

// adminRegister answers POST /_synapse/admin/v1/register.
func (s *Server) adminRegister(w http.ResponseWriter, r *http.Request) error {
	if err := s.sharedSecretEnabled(); err != nil {
		return err
	}
	if err := s.registerLimit.Allow(s.clientIP.ClientIP(r)); err != nil {
		return err
	}
	var req struct {
		Nonce       string `json:"nonce"`
		Username    string `json:"username"`
		Password    string `json:"password"`
		Admin       bool   `json:"admin"`
		MAC         string `json:"mac"`
		UserType    string `json:"user_type"`
		DisplayName string `json:"displayname"`
	}
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	if req.Nonce == "" || req.Username == "" || req.Password == "" || req.MAC == "" {
		return mxerr.New(mxerr.MissingParam, "nonce, username, password and mac are required")
	}
	ctx := r.Context()
	now := time.Now()
	// The nonce is spent first, whatever follows: one nonce, one attempt.
	var created int64
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		return tx.QueryRow(ctx, `DELETE FROM admin_register_nonces WHERE nonce = $1 RETURNING created_ts`, req.Nonce).Scan(&created)
	})
	if storage.IsNoRows(err) || (err == nil && now.Sub(time.UnixMilli(created)) > adminNonceLifetime) {
		return mxerr.New(mxerr.Unknown, "unrecognised or expired nonce").WithStatus(http.StatusBadRequest)
	}
	if err != nil {
		return err
	}
	given, err := hex.DecodeString(req.MAC)
	if err != nil || !hmac.Equal(given, s.adminMAC(req.Nonce, req.Username, req.Password, req.Admin, req.UserType)) {
		return mxerr.New(mxerr.Forbidden, "HMAC incorrect")
	}
	localpart, err := s.accounts.mapUsername(req.Username)
	if err != nil {
		return err
	}
	if err := s.accounts.checkPasswordStrength(req.Password); err != nil {
		return err
	}
	hash, err := hashPassword(req.Password)
	if err != nil {
		return err
	}
	var out issued
	err = s.db.Write(ctx, func(tx storage.Tx) error {
		if err := insertAccount(ctx, tx, localpart, hash, false, req.Admin, now); err != nil {
			return err
		}
		var err error
		out, err = s.accounts.issueSession(ctx, tx, localpart, sessionOptions{}, now)
		return err
	})
	if err != nil {
		return err
	}
	body := s.sessionResponse(localpart, out)
	body["home_server"] = s.serverName
	return httpx.OK(w, body)
}

// adminMAC computes the expected MAC. user_type, when given, is appended
// as a fifth NUL-separated field.
func (s *Server) adminMAC(nonce, username, password string, admin bool, userType string) []byte {
	mac := hmac.New(sha1.New, []byte(s.cfg.ClientAPI.RegistrationSharedSecret))
	role := "notadmin"
	if admin {
		role = "admin"
	}
	mac.Write([]byte(nonce + "\x00" + username + "\x00" + password + "\x00" + role))
	if userType != "" {
		mac.Write([]byte("\x00" + userType))
	}
	return mac.Sum(nil)
}
