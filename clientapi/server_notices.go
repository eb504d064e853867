package clientapi

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
)

// Server notices: official messages from the server to one user, sent by
// the user client_api.server_notices.localpart in a room the server keeps
// per user. Administrators send them through Synapse's admin API
// (POST /_synapse/admin/v1/send_server_notice and PUT .../{txnId}),
// which admin tools and Complement use.
// Spec: client-server-api, "Server Notices".

// serverNoticeTag marks the server notices room in the user's m.tag.
const serverNoticeTag = "m.server_notice"

// serverNotices is the state of the server notices module inside Server.
type serverNotices struct {
	// userID is the sender of notices; "" when notices are off. Immutable.
	userID string
	// mu serialises finding or creating a user's room in this process,
	// so two notices sent at once do not make two rooms.
	mu sync.Mutex
}

func (s *Server) serverNoticeRoutes(r chi.Router) {
	handle(r, http.MethodPost, "/_synapse/admin/v1/send_server_notice", s.sendServerNotice)
	handle(r, http.MethodPut, "/_synapse/admin/v1/send_server_notice/{txnId}", s.sendServerNotice)
}

// initServerNotices creates the notices user's account (without a
// password: nobody can log in as it, and nobody can register its name)
// and sets its profile from the config.
func (s *Server) initServerNotices(ctx context.Context) error {
	cfg := s.cfg.ClientAPI.ServerNotices
	if cfg.Localpart == "" || s.rooms.rooms == nil {
		return nil
	}
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		_, err := tx.Exec(ctx, `
			INSERT INTO accounts (localpart, password_hash, created_ts) VALUES ($1, '', $2)
			ON CONFLICT (localpart) DO NOTHING`, cfg.Localpart, time.Now().UnixMilli())
		return err
	})
	if err != nil {
		return err
	}
	for key, value := range map[string]string{fieldDisplayName: cfg.DisplayName, fieldAvatarURL: cfg.AvatarURL} {
		if value == "" {
			if _, err := s.deleteProfileFieldRow(ctx, cfg.Localpart, key); err != nil {
				return err
			}
			continue
		}
		raw, _ := json.Marshal(value)
		if _, err := s.storeProfileField(ctx, cfg.Localpart, key, raw); err != nil {
			return err
		}
	}
	s.notices.userID = "@" + cfg.Localpart + ":" + s.serverName
	return nil
}

// serverNoticeBody is the body of send_server_notice.
type serverNoticeBody struct {
	UserID   string          `json:"user_id"`
	Content  json.RawMessage `json:"content"`
	Type     string          `json:"type"`
	StateKey *string         `json:"state_key"`
}

// sendServerNotice sends one notice to a local user, inviting them to
// their server notices room (made on first use) unless they are in it.
// Only server administrators may call it. With a txnId, a retry by the
// same device returns the first event.
func (s *Server) sendServerNotice(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	me := caller(r)
	admin, err := s.isAdmin(ctx, me.UserID)
	if err != nil {
		return err
	}
	if !admin {
		return mxerr.New(mxerr.Forbidden, "only server administrators can send server notices")
	}
	if s.notices.userID == "" {
		return mxerr.New(mxerr.Unknown, "server notices are not enabled on this server (client_api.server_notices.localpart)").WithStatus(http.StatusBadRequest)
	}
	var body serverNoticeBody
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return err
	}
	if body.UserID == "" {
		return mxerr.New(mxerr.MissingParam, "user_id is required")
	}
	if c := bytes.TrimSpace(body.Content); len(c) == 0 || c[0] != '{' {
		return mxerr.New(mxerr.BadJSON, "content must be a JSON object")
	}
	if body.Type == "" {
		body.Type = "m.room.message"
	}
	target := s.localpart(body.UserID)
	if target == "" {
		return mxerr.New(mxerr.InvalidParam, "server notices can only be sent to users of this server")
	}
	acct, found, err := lookupAccount(ctx, s.db.Reader(), target)
	if err != nil {
		return err
	}
	if !found || acct.deactivated || acct.isGuest || body.UserID == s.notices.userID {
		return mxerr.New(mxerr.NotFound, "%s is not an active user of this server", body.UserID)
	}
	roomID, err := s.serverNoticeRoom(ctx, body.UserID)
	if err != nil {
		return err
	}
	req := roomserver.SendEventRequest{RoomID: roomID, Sender: s.notices.userID, Type: body.Type,
		StateKey: body.StateKey, Content: body.Content}
	if chi.URLParam(r, "txnId") != "" {
		txnID, err := unescapedParam(r, "txnId")
		if err != nil {
			return err
		}
		// The transaction belongs to the administrator's device, like a
		// client's send; the event's sender is the notices user.
		req.TxnID = &roomserver.TxnID{DeviceID: "server_notice " + me.UserID + " " + me.DeviceID, TxnID: txnID}
	}
	resp, err := s.rooms.rooms.SendEvent(ctx, req)
	if err != nil {
		return err
	}
	return httpx.WriteEventID(w, resp.EventID)
}

// serverNoticeRoom returns userID's server notices room, creating it on
// first use, and makes sure userID is joined or invited to it.
// Spec: "Servers should invite the target user rather than automatically
// join them to the server notice room."
func (s *Server) serverNoticeRoom(ctx context.Context, userID string) (string, error) {
	s.notices.mu.Lock()
	defer s.notices.mu.Unlock()
	roomID, err := s.serverNoticeRoomOf(ctx, userID)
	if err != nil {
		return "", err
	}
	if roomID == "" {
		cfg := s.cfg.ClientAPI.ServerNotices
		resp, err := s.rooms.rooms.CreateRoom(ctx, roomserver.CreateRoomRequest{
			Creator: s.notices.userID, Preset: "private_chat", Visibility: "private",
			Name: cfg.RoomName, Invite: []string{userID},
			// The user reads notices; only the server writes.
			PowerLevelContentOverride: map[string]any{"users_default": -10},
			CreatorMemberContent:      s.memberProfile(ctx, s.notices.userID),
		})
		if err != nil {
			return "", err
		}
		if err := s.db.Write(ctx, func(tx storage.Tx) error {
			_, err := tx.Exec(ctx, `INSERT INTO server_notice_rooms (user_id, room_id) VALUES ($1, $2)`, userID, resp.RoomID)
			return err
		}); err != nil {
			return "", err
		}
		return resp.RoomID, s.tagServerNoticeRoom(ctx, userID, resp.RoomID)
	}
	membership, err := s.rooms.rooms.Membership(ctx, roomID, userID)
	if err != nil {
		return "", err
	}
	switch membership {
	case "join", "invite":
		return roomID, nil
	case "ban":
		return "", mxerr.New(mxerr.Forbidden, "%s is banned from their server notices room", userID)
	}
	if _, err := s.rooms.rooms.Invite(ctx, roomserver.MembershipRequest{RoomID: roomID, Sender: s.notices.userID,
		Target: userID, Content: s.memberProfile(ctx, userID)}); err != nil {
		return "", err
	}
	return roomID, s.tagServerNoticeRoom(ctx, userID, roomID)
}

// serverNoticeRoomOf returns userID's server notices room, or "".
func (s *Server) serverNoticeRoomOf(ctx context.Context, userID string) (string, error) {
	var roomID string
	err := s.db.Reader().QueryRow(ctx, `SELECT room_id FROM server_notice_rooms WHERE user_id = $1`, userID).Scan(&roomID)
	if storage.IsNoRows(err) {
		return "", nil
	}
	return roomID, err
}

// tagServerNoticeRoom adds the m.server_notice tag to userID's m.tag
// for the room, keeping their other tags.
// Spec: "Servers must identify this room to clients with the
// m.server_notice tag."
func (s *Server) tagServerNoticeRoom(ctx context.Context, userID, roomID string) error {
	local := s.localpart(userID)
	return s.db.Write(ctx, func(tx storage.Tx) error {
		return s.updateRoomTagsTx(ctx, tx, local, roomID, func(tags map[string]json.RawMessage) bool {
			if _, ok := tags[serverNoticeTag]; ok {
				return false
			}
			tags[serverNoticeTag] = json.RawMessage(`{}`)
			return true
		})
	})
}

// checkNotRejectingServerNotices refuses to let userID reject an invite
// to their server notices room. Leaving after joining is allowed.
// Spec: "Attempting to reject the invite must result in a
// M_CANNOT_LEAVE_SERVER_NOTICE_ROOM error. Servers should not prevent the
// user leaving the room after joining."
func (s *Server) checkNotRejectingServerNotices(ctx context.Context, userID, roomID string) error {
	if s.notices.userID == "" {
		return nil
	}
	own, err := s.serverNoticeRoomOf(ctx, userID)
	if err != nil || own != roomID {
		return err
	}
	membership, err := s.rooms.rooms.Membership(ctx, roomID, userID)
	if err != nil {
		return err
	}
	if membership == "invite" {
		return mxerr.New(mxerr.CannotLeaveServerNotice, "the invite to the server notices room cannot be rejected")
	}
	return nil
}

// isAdmin reports whether userID is a local server administrator.
func (s *Server) isAdmin(ctx context.Context, userID string) (bool, error) {
	local := s.localpart(userID)
	if local == "" {
		return false, nil
	}
	acct, found, err := lookupAccount(ctx, s.db.Reader(), local)
	if err != nil || !found {
		return false, err
	}
	return acct.isAdmin && !acct.deactivated, nil
}
