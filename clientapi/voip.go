package clientapi

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"net/http"
	"strconv"
	"time"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
)

// turnServerResponse is GET /voip/turnServer's answer.
// Spec: client-server-api, "Voice over IP"; data/api/client-server/voip.yaml.
type turnServerResponse struct {
	Username string   `json:"username"`
	Password string   `json:"password"`
	URIs     []string `json:"uris"`
	TTL      int64    `json:"ttl"` // seconds
}

// getTurnServer hands the caller credentials for the configured TURN
// server: time-limited ones derived from the shared secret, or the fixed
// username and password.
//
// Spec: client-server-api, "Voice over IP": "The homeserver MAY provide
// a TURN server". When it provides none the spec gives no answer (the
// 200 schema requires username, password, uris and ttl, and no error is
// defined: matrix-spec issue 1795 is open), so this answers 200 {}, what
// Synapse and Dendrite answer and what clients (matrix-js-sdk reads
// uris only when present) treat as "no TURN server". An empty uris list
// would be worse: WebRTC refuses an ICE server without URLs.
//
// Guests: the endpoint is not among those the spec opens to guests
// ("Guest Access", "Client behaviour"), so they are refused with
// M_GUEST_ACCESS_FORBIDDEN unless client_api.turn.allow_guests is set.
func (s *Server) getTurnServer(w http.ResponseWriter, r *http.Request) error {
	turn := s.cfg.ClientAPI.TURN
	caller := authn.FromContext(r.Context())
	if caller == nil {
		return mxerr.New(mxerr.MissingToken, "missing access token")
	}
	if caller.IsGuest && !turn.AllowGuests {
		return mxerr.New(mxerr.GuestAccessForbidden, "guests cannot use the TURN server")
	}
	if len(turn.URIs) == 0 {
		return httpx.OK(w, httpx.EmptyObject)
	}
	return httpx.OK(w, turnCredentials(turn, caller.UserID, time.Now()))
}

// turnCredentials returns userID's TURN credentials at now.
func turnCredentials(turn config.TURN, userID string, now time.Time) turnServerResponse {
	ttl := int64(time.Duration(turn.TTL) / time.Second)
	resp := turnServerResponse{Username: turn.Username, Password: turn.Password, URIs: turn.URIs, TTL: ttl}
	if turn.SharedSecret != "" {
		// The TURN REST API scheme coturn checks under use-auth-secret:
		// the username is the expiry time (Unix seconds) and the user,
		// joined by ':'; the password is the standard base64 of the
		// HMAC-SHA1 of that username keyed with the shared secret.
		resp.Username = strconv.FormatInt(now.Unix()+ttl, 10) + ":" + userID
		mac := hmac.New(sha1.New, []byte(turn.SharedSecret))
		mac.Write([]byte(resp.Username))
		resp.Password = base64.StdEncoding.EncodeToString(mac.Sum(nil))
	}
	return resp
}
