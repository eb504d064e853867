package config

import (
	"fmt"
	"strings"
	"time"
)

// ClientAPI configures accounts, login and registration.
type ClientAPI struct {
	Registration             string     `yaml:"registration" doc:"Who may register: token (needs a registration token from 'myelin token create'), open (anyone; m.login.dummy), or closed (only admins via 'myelin user create' or shared-secret registration)."`
	RegistrationSharedSecret string     `yaml:"registration_shared_secret" doc:"Enables /_synapse/admin/v1/register (HMAC shared-secret registration) when set. Keep it secret."`
	GuestAccess              bool       `yaml:"guest_access" doc:"Allow guest accounts (kind=guest registration)."`
	PasswordMinLength        int        `yaml:"password_min_length" doc:"Shortest password accepted at registration and password change (M_WEAK_PASSWORD)."`
	LoginTokenLifetime       Duration   `yaml:"login_token_lifetime" doc:"How long an m.login.token from /login/get_token stays valid (single use)."`
	AccessTokenLifetime      Duration   `yaml:"access_token_lifetime" doc:"Lifetime of access tokens issued with a refresh token (when the client asks for refresh_token)."`
	IPRetention              Duration   `yaml:"ip_retention" doc:"How long a device's last-seen IP address is kept."`
	RateLimits               RateLimits `yaml:"rate_limits" doc:"Token-bucket rate limits (per user, or per IP when unauthenticated)."`

	// Spec: client-server-api, "Server Notices".
	ServerNotices ServerNotices `yaml:"server_notices" doc:"The server notices room: official messages from the server to a user."`
	// MSC4140.
	DelayedEvents DelayedEvents `yaml:"delayed_events" doc:"Delayed events (MSC4140): events the server sends for a client after a delay the client can restart or cancel."`
	// Spec: client-server-api, "Voice over IP", GET /voip/turnServer.
	TURN TURN `yaml:"turn" doc:"The TURN server handed to clients for VoIP calls (GET /_matrix/client/v3/voip/turnServer)."`
	// Spec: client-server-api, "SSO client login/authentication".
	SSO SSO `yaml:"sso" doc:"Single sign-on (m.login.sso) through upstream OpenID Connect providers (Keycloak, Authentik, GitLab, Google, ...): Myelin is the relying party."`
}

func (ClientAPI) Defaults() ClientAPI {
	return ClientAPI{
		Registration:        "token",
		PasswordMinLength:   8,
		LoginTokenLifetime:  Duration(2 * time.Minute),
		AccessTokenLifetime: Duration(5 * time.Minute),
		IPRetention:         Duration(28 * 24 * time.Hour),
		RateLimits:          RateLimits{}.Defaults(),

		ServerNotices: ServerNotices{}.Defaults(),
		DelayedEvents: DelayedEvents{}.Defaults(),
		TURN:          TURN{}.Defaults(),
		SSO:           SSO{}.Defaults(),
	}
}

func (c ClientAPI) Validate() error {
	var errs []error
	switch c.Registration {
	case "token", "open", "closed":
	default:
		errs = append(errs, fieldError("client_api.registration", fmt.Sprintf("%q is not a registration mode", c.Registration), "use token, open or closed"))
	}
	if c.PasswordMinLength < 0 {
		errs = append(errs, fieldError("client_api.password_min_length", "is negative", "use 8 or more"))
	}
	if c.LoginTokenLifetime <= 0 {
		errs = append(errs, fieldError("client_api.login_token_lifetime", "must be positive", "e.g. 2m"))
	}
	if c.AccessTokenLifetime < Duration(time.Minute) {
		errs = append(errs, fieldError("client_api.access_token_lifetime", "must be at least 1m", "e.g. 5m"))
	}
	if c.IPRetention < 0 {
		errs = append(errs, fieldError("client_api.ip_retention", "is negative", "e.g. 672h (28 days)"))
	}
	if err := c.RateLimits.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.ServerNotices.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.DelayedEvents.MaxDelay < 0 || c.DelayedEvents.MaxPerUser < 1 {
		errs = append(errs, fieldError("client_api.delayed_events", "max_delay must not be negative and max_per_user must be at least 1", "e.g. max_delay: 24h, max_per_user: 100"))
	}
	if err := c.TURN.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.SSO.Validate(); err != nil {
		errs = append(errs, err)
	}
	return joinErrs(errs)
}

// RateLimits configures the token buckets.
type RateLimits struct {
	Enabled  bool      `yaml:"enabled" doc:"Turn rate limiting on. Only turn it off for tests and benchmarks."`
	Register RateLimit `yaml:"register" doc:"Registration attempts, per client IP."`
	Login    RateLimit `yaml:"login" doc:"Login attempts, per client IP."`
	Message  RateLimit `yaml:"message" doc:"Events sent, per user."`
}

func (RateLimits) Defaults() RateLimits {
	return RateLimits{
		Enabled:  true,
		Register: RateLimit{PerSecond: 0.17, Burst: 3},
		Login:    RateLimit{PerSecond: 0.5, Burst: 5},
		Message:  RateLimit{PerSecond: 10, Burst: 50},
	}
}

func (r RateLimits) Validate() error {
	var errs []error
	for name, l := range map[string]RateLimit{"register": r.Register, "login": r.Login, "message": r.Message} {
		if l.PerSecond <= 0 || l.Burst < 1 {
			errs = append(errs, fieldError("client_api.rate_limits."+name, "per_second must be > 0 and burst >= 1", "e.g. per_second: 1, burst: 5"))
		}
	}
	return joinErrs(errs)
}

// RateLimit is one token bucket: Burst tokens, refilled at PerSecond.
type RateLimit struct {
	PerSecond float64 `yaml:"per_second" doc:"Sustained rate, in requests per second."`
	Burst     int     `yaml:"burst" doc:"Requests allowed at once before the rate applies."`
}

// ServerNotices configures the user that sends server notices and the
// room it sends them in.
type ServerNotices struct {
	Localpart   string `yaml:"localpart" doc:"Localpart of the user that sends server notices (for example 'server'). Empty turns server notices off. The account is created at start and nobody can log in as it."`
	DisplayName string `yaml:"display_name" doc:"Display name of the server notices user."`
	AvatarURL   string `yaml:"avatar_url" doc:"Avatar of the server notices user, an mxc:// URI; empty for none."`
	RoomName    string `yaml:"room_name" doc:"Name given to each user's server notices room."`
}

func (ServerNotices) Defaults() ServerNotices {
	return ServerNotices{DisplayName: "Server Notices", RoomName: "Server Notices"}
}

func (n ServerNotices) Validate() error {
	var errs []error
	for _, r := range n.Localpart {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || strings.ContainsRune("._=-/+", r)) {
			errs = append(errs, fieldError("client_api.server_notices.localpart", fmt.Sprintf("%q is not a valid localpart", n.Localpart), "use lower-case letters, digits and ._=-/+"))
			break
		}
	}
	if n.AvatarURL != "" && !strings.HasPrefix(n.AvatarURL, "mxc://") {
		errs = append(errs, fieldError("client_api.server_notices.avatar_url", "is not an mxc:// URI", "upload the image and use its mxc:// URI"))
	}
	return joinErrs(errs)
}

// DelayedEvents limits MSC4140's delayed events.
type DelayedEvents struct {
	MaxDelay   Duration `yaml:"max_delay" doc:"Longest delay a client may ask for; 0 turns delayed events off."`
	MaxPerUser int      `yaml:"max_per_user" doc:"Most delayed events one user may have waiting at once."`
}

func (DelayedEvents) Defaults() DelayedEvents {
	return DelayedEvents{MaxDelay: Duration(24 * time.Hour), MaxPerUser: 100}
}

// TURN configures the TURN server clients are told about. Credentials
// are either time-limited ones derived from a secret shared with the
// TURN server (coturn's use-auth-secret / static-auth-secret, the "TURN
// REST API" scheme) or one fixed username and password.
type TURN struct {
	URIs         []string `yaml:"uris" doc:"TURN URIs (turn: or turns:), e.g. turn:turn.example.com:3478?transport=udp, turns:turn.example.com:5349?transport=tcp. Empty: no TURN server is offered."`
	SharedSecret string   `yaml:"shared_secret" doc:"The TURN server's shared secret (coturn: static-auth-secret with use-auth-secret). Each client gets the username <expiry unix seconds>:<user ID> and the password base64(HMAC-SHA1(secret, username)), valid for ttl. Keep it secret."`
	Username     string   `yaml:"username" doc:"A fixed TURN username for every client, used when shared_secret is empty."`
	Password     string   `yaml:"password" doc:"The password that goes with username."`
	TTL          Duration `yaml:"ttl" doc:"How long credentials from shared_secret stay valid, and how long clients may keep any credentials before asking again (whole seconds)."`
	AllowGuests  bool     `yaml:"allow_guests" doc:"Also give guest accounts TURN credentials. Off: guests are refused (M_GUEST_ACCESS_FORBIDDEN), as the spec does not list this endpoint among those open to guests."`
}

func (TURN) Defaults() TURN {
	return TURN{TTL: Duration(24 * time.Hour)}
}

func (t TURN) Validate() error {
	var errs []error
	for _, uri := range t.URIs {
		// Spec: voip.yaml, uris items: pattern "^turns?:".
		if !strings.HasPrefix(uri, "turn:") && !strings.HasPrefix(uri, "turns:") {
			errs = append(errs, fieldError("client_api.turn.uris", fmt.Sprintf("%q is not a TURN URI", uri), "start each with turn: or turns:"))
		}
	}
	if t.TTL < Duration(time.Second) {
		errs = append(errs, fieldError("client_api.turn.ttl", "must be at least 1s", "e.g. 24h"))
	}
	if t.SharedSecret != "" && (t.Username != "" || t.Password != "") {
		errs = append(errs, fieldError("client_api.turn", "shared_secret and username/password are both set", "use one of them"))
	}
	if (t.Username == "") != (t.Password == "") {
		errs = append(errs, fieldError("client_api.turn", "username and password go together", "set both, or neither"))
	}
	if len(t.URIs) > 0 && t.SharedSecret == "" && t.Username == "" {
		errs = append(errs, fieldError("client_api.turn", "uris are set without credentials", "set shared_secret, or username and password"))
	}
	if len(t.URIs) == 0 && (t.SharedSecret != "" || t.Username != "") {
		errs = append(errs, fieldError("client_api.turn.uris", "is empty but credentials are set", "list the TURN server's URIs"))
	}
	return joinErrs(errs)
}
