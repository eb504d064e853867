package clientapi

import (
	"context"
	"crypto/rand"
	"database/sql"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// Accounts is the account store: accounts, devices, sessions and
// registration tokens. The HTTP handlers use it, and so do the admin
// commands (cmd/myelin), which open it without starting a server.
//
// Concurrency: safe for concurrent use; all state is in the database.
type Accounts struct {
	db         *storage.DB      // immutable
	serverName string           // immutable
	cfg        config.ClientAPI // immutable
	// onDevicesDeleted, if non-nil, runs inside every transaction that
	// deletes devices (Deps.OnDevicesDeleted). Set once, by New or by
	// SetDevicesDeletedHook, before any use.
	onDevicesDeleted DevicesDeletedHook
	// onDeviceCreated, if non-nil, runs inside every transaction that
	// creates a device (Deps.OnDeviceCreated). Set once by New.
	onDeviceCreated DeviceCreatedHook
	// sessionless, if non-nil, names devices that never get a session
	// (Deps.SessionlessDevice). Set once by New.
	sessionless func(ctx context.Context, q storage.Querier, userID, deviceID string) (bool, error)
	// notify is told of the account data positions the store writes
	// (Deps.Notify); nil for the admin commands. Set once by New.
	notify func(stream string, pos int64)
	// tokens caches verified access tokens (tokencache.go); nil (off) for
	// the admin commands and with Redis. Set once by New.
	tokens *tokenCache
	// revocationMark is the file every process rewrites after it commits
	// a change to sessions (SQLite only: every process using the database
	// shares its directory); tokencache.go. Empty: none.
	revocationMark string
}

// DevicesDeletedHook is called inside the transaction that deletes
// userID's devices deviceIDs (logout, device deletion, password change
// with logout, deactivation), so another component's per-device state —
// the key server's device keys — goes in the same commit. An error rolls
// the deletion back.
type DevicesDeletedHook func(ctx context.Context, tx storage.Tx, userID string, deviceIDs []string) error

// DeviceCreatedHook is called inside the transaction that creates
// userID's device deviceID (a login with a new device ID, or an
// application service's device). An error rolls the creation back.
type DeviceCreatedHook func(ctx context.Context, tx storage.Tx, userID, deviceID string) error

// deviceCreated runs onDeviceCreated, if any.
func (a *Accounts) deviceCreated(ctx context.Context, tx storage.Tx, localpart, deviceID string) error {
	if a.onDeviceCreated == nil {
		return nil
	}
	return a.onDeviceCreated(ctx, tx, a.userID(localpart), deviceID)
}

// OpenAccounts runs clientapi's migrations on db and returns the store.
func OpenAccounts(ctx context.Context, cfg *config.Config, db *storage.DB) (*Accounts, error) {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return nil, err
	}
	if err := db.Migrate(ctx, "clientapi", sub); err != nil {
		return nil, err
	}
	a := &Accounts{db: db, serverName: cfg.Global.ServerName, cfg: cfg.ClientAPI}
	if cfg.Database.Engine == "sqlite" && cfg.Database.SQLitePath != "" && cfg.Database.SQLitePath != ":memory:" {
		a.revocationMark = cfg.Database.SQLitePath + "-sessions"
	}
	return a, nil
}

// SetDevicesDeletedHook makes h run inside every transaction that deletes
// devices, after the devices' own account data is deleted: what
// Deps.OnDevicesDeleted does for a server. The admin commands
// (cmd/myelin) give it the same hook as the server
// (homeserver.DevicesDeletedHook). Call it once, before any use.
func (a *Accounts) SetDevicesDeletedHook(h DevicesDeletedHook) {
	a.onDevicesDeleted = h
}

// account is one row of the accounts table.
type account struct {
	localpart    string
	passwordHash string
	isGuest      bool
	isAdmin      bool
	deactivated  bool
	erased       bool
	createdTS    int64
}

const accountColumns = `localpart, password_hash, is_guest, is_admin, deactivated, erased, created_ts`

func scanAccount(row interface{ Scan(...any) error }) (account, error) {
	var a account
	err := row.Scan(&a.localpart, &a.passwordHash, &a.isGuest, &a.isAdmin, &a.deactivated, &a.erased, &a.createdTS)
	return a, err
}

// lookupAccount returns the account, or ok=false if there is none.
func lookupAccount(ctx context.Context, q storage.Querier, localpart string) (account, bool, error) {
	a, err := scanAccount(q.QueryRow(ctx, `SELECT `+accountColumns+` FROM accounts WHERE localpart = $1`, localpart))
	if storage.IsNoRows(err) {
		return account{}, false, nil
	}
	if err != nil {
		return account{}, false, err
	}
	return a, true, nil
}

// insertAccount creates an account; a taken localpart is M_USER_IN_USE.
func insertAccount(ctx context.Context, tx storage.Tx, localpart, passwordHash string, isGuest, isAdmin bool, now time.Time) error {
	_, err := tx.Exec(ctx, `
		INSERT INTO accounts (localpart, password_hash, created_ts, is_guest, is_admin)
		VALUES ($1, $2, $3, $4, $5)`, localpart, passwordHash, now.UnixMilli(), isGuest, isAdmin)
	if storage.IsUniqueViolation(err) {
		return mxerr.New(mxerr.UserInUse, "the user ID is already taken")
	}
	return err
}

// issued is what a login or registration hands the client.
type issued struct {
	DeviceID     string
	AccessToken  string
	RefreshToken string // "" unless requested
	ExpiresInMS  int64  // 0 when the access token does not expire
}

// sessionOptions says how to create a login session.
type sessionOptions struct {
	// deviceID to use; generated when empty.
	deviceID string
	// displayName for a new device (ignored for an existing one).
	displayName *string
	// refresh asks for a refresh token and an expiring access token.
	refresh bool
}

// issueSession creates (or reuses) the device and gives it a fresh
// session, replacing any session the device had.
//
// Spec: client-server-api, "Relationship between access tokens and
// devices": if the client sets the device_id, the server invalidates any
// tokens previously assigned to that device.
func (a *Accounts) issueSession(ctx context.Context, tx storage.Tx, localpart string, opts sessionOptions, now time.Time) (issued, error) {
	deviceID := opts.deviceID
	if deviceID == "" {
		deviceID = newDeviceID()
	} else if a.sessionless != nil {
		// MSC3814: the dehydrated device gets no access token; a client
		// rehydrating it keeps its own device ID.
		refused, err := a.sessionless(ctx, tx, a.userID(localpart), deviceID)
		if err != nil {
			return issued{}, err
		}
		if refused {
			return issued{}, mxerr.New(mxerr.InvalidParam, "device %s is the account's dehydrated device, which cannot log in", deviceID)
		}
	}
	if _, err := a.insertDevice(ctx, tx, localpart, deviceID, opts.displayName, now); err != nil {
		return issued{}, err
	}
	if _, err := tx.Exec(ctx, `DELETE FROM sessions WHERE localpart = $1 AND device_id = $2`, localpart, deviceID); err != nil {
		return issued{}, err
	}
	if err := a.sessionsChanged(tx); err != nil {
		return issued{}, err
	}
	out := issued{DeviceID: deviceID, AccessToken: newToken(accessTokenPrefix)}
	var (
		expires     int64
		refreshHash []byte
	)
	if opts.refresh {
		lifetime := a.cfg.AccessTokenLifetime.D()
		expires = now.Add(lifetime).UnixMilli()
		out.ExpiresInMS = lifetime.Milliseconds()
		out.RefreshToken = newToken(refreshTokenPrefix)
		refreshHash = hashToken(out.RefreshToken)
	}
	_, err := tx.Exec(ctx, `
		INSERT INTO sessions (localpart, device_id, access_token_hash, access_expires_ts, refresh_token_hash, created_ts)
		VALUES ($1, $2, $3, $4, $5, $6)`,
		localpart, deviceID, hashToken(out.AccessToken), expires, refreshHash, now.UnixMilli())
	return out, err
}

// deleteDevices deletes the user's devices and their sessions: the listed
// ones, or all of them when deviceIDs is nil, sparing keep (if not "").
// The devices actually deleted are passed to onDevicesDeleted.
func (a *Accounts) deleteDevices(ctx context.Context, tx storage.Tx, localpart string, deviceIDs []string, keep string) error {
	var deleted []string
	if err := a.sessionsChanged(tx); err != nil {
		return err
	}
	if deviceIDs == nil {
		if _, err := tx.Exec(ctx, `DELETE FROM sessions WHERE localpart = $1 AND device_id <> $2`, localpart, keep); err != nil {
			return err
		}
		var err error
		deleted, err = storage.QueryColumn[string](ctx, tx, `DELETE FROM devices WHERE localpart = $1 AND device_id <> $2 RETURNING device_id`, localpart, keep)
		if err != nil {
			return err
		}
	}
	for _, id := range deviceIDs {
		if id == keep {
			continue
		}
		if _, err := tx.Exec(ctx, `DELETE FROM sessions WHERE localpart = $1 AND device_id = $2`, localpart, id); err != nil {
			return err
		}
		res, err := tx.Exec(ctx, `DELETE FROM devices WHERE localpart = $1 AND device_id = $2`, localpart, id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n > 0 {
			deleted = append(deleted, id)
		}
	}
	if len(deleted) == 0 {
		return nil
	}
	if err := a.deleteDeviceAccountData(ctx, tx, localpart, deleted); err != nil {
		return err
	}
	if a.onDevicesDeleted == nil {
		return nil
	}
	return a.onDevicesDeleted(ctx, tx, a.userID(localpart), deleted)
}

// setPassword replaces the password hash; with logoutDevices it also
// deletes every device except keep.
func (a *Accounts) setPassword(ctx context.Context, tx storage.Tx, localpart, passwordHash string, logoutDevices bool, keep string) error {
	res, err := tx.Exec(ctx, `UPDATE accounts SET password_hash = $1 WHERE localpart = $2 AND NOT deactivated`, passwordHash, localpart)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return mxerr.New(mxerr.NotFound, "no active account %q", localpart)
	}
	if logoutDevices {
		return a.deleteDevices(ctx, tx, localpart, nil, keep)
	}
	return nil
}

// deactivateAccount marks the account deactivated and revokes everything
// that could act for it: devices, sessions, login tokens and UIA sessions,
// and queues the leaving of its rooms (deactivation.go). With erase, the
// password hash is wiped too.
//
// Spec: client-server-api, "POST /_matrix/client/v3/account/deactivate".
func (a *Accounts) deactivateAccount(ctx context.Context, tx storage.Tx, localpart string, erase bool) error {
	res, err := tx.Exec(ctx, `
		UPDATE accounts SET deactivated = TRUE, erased = (erased OR $2),
			password_hash = CASE WHEN $2 THEN '' ELSE password_hash END
		WHERE localpart = $1`, localpart, erase)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return mxerr.New(mxerr.NotFound, "no account %q", localpart)
	}
	if err := a.sessionsChanged(tx); err != nil {
		return err
	}
	if err := a.deleteDevices(ctx, tx, localpart, nil, ""); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `DELETE FROM login_tokens WHERE localpart = $1`, localpart); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `DELETE FROM uia_sessions WHERE localpart = $1`, localpart); err != nil {
		return err
	}
	// The rooms are left by a server process (deactivation.go), which
	// holds the rooms' writers; queued here so that the HTTP path and
	// the admin command, which may run while a server does, share it.
	_, err = tx.Exec(ctx, `INSERT INTO deactivation_leaves (localpart, queued_ts) VALUES ($1, $2)
		ON CONFLICT (localpart) DO NOTHING`, localpart, time.Now().UnixMilli())
	return err
}

// device is one row of the devices table, shaped as the spec's Device.
// Spec: client-server-api, "GET /_matrix/client/v3/devices".
type device struct {
	DeviceID    string  `json:"device_id"`
	DisplayName *string `json:"display_name,omitempty"`
	LastSeenIP  *string `json:"last_seen_ip,omitempty"`
	LastSeenTS  *int64  `json:"last_seen_ts,omitempty"`
}

func scanDevice(row interface{ Scan(...any) error }) (device, error) {
	var (
		d      device
		name   sql.NullString
		ip     sql.NullString
		seenTS int64
	)
	if err := row.Scan(&d.DeviceID, &name, &ip, &seenTS); err != nil {
		return d, err
	}
	if name.Valid {
		d.DisplayName = &name.String
	}
	if ip.Valid && ip.String != "" {
		d.LastSeenIP = &ip.String
	}
	if seenTS > 0 {
		d.LastSeenTS = &seenTS
	}
	return d, nil
}

// listDevices returns the user's devices ordered by ID.
func listDevices(ctx context.Context, q storage.Querier, localpart string) ([]device, error) {
	rows, err := q.Query(ctx, `
		SELECT device_id, display_name, last_seen_ip, last_seen_ts
		FROM devices WHERE localpart = $1 ORDER BY device_id`, localpart)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []device{}
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// newDeviceID returns a random device ID of ten capital letters.
func newDeviceID() string { return randomString(10, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") }

// randomString returns n characters drawn uniformly from alphabet.
func randomString(n int, alphabet string) string {
	var b strings.Builder
	buf := make([]byte, 1)
	limit := 256 - 256%len(alphabet)
	for b.Len() < n {
		_, _ = rand.Read(buf)
		if int(buf[0]) >= limit {
			continue // reject to keep the draw uniform
		}
		b.WriteByte(alphabet[int(buf[0])%len(alphabet)])
	}
	return b.String()
}

// userID makes a full user ID from a localpart.
func (a *Accounts) userID(localpart string) string {
	return fmt.Sprintf("@%s:%s", localpart, a.serverName)
}
