package clientapi

import (
	"context"
	"net/http"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// maxReportReason bounds a report's reason, in bytes.
const maxReportReason = 4096

// reportBody is the body of both report endpoints.
type reportBody struct {
	Reason *string `json:"reason"`
	Score  *int64  `json:"score"`
}

// reportRoutes registers the three report endpoints of
// client-server-api, "Reporting content", and the administrators'
// endpoints that read the reports (reports_admin.go).
func (s *Server) reportRoutes(r chi.Router) {
	const v3 = "/_matrix/client/v3"
	handle(r, http.MethodPost, v3+"/rooms/{roomId}/report/{eventId}", s.reportEvent)
	handle(r, http.MethodPost, v3+"/rooms/{roomId}/report", s.reportRoom)
	handle(r, http.MethodPost, v3+"/users/{userId}/report", s.reportUser)
	s.reportAdminRoutes(r)
}

// reportEvent records a report about an event in a room the caller is
// joined to. Spec: client-server-api, "POST /_matrix/client/v3/rooms/{roomId}/report/{eventId}".
func (s *Server) reportEvent(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	roomID, eventID, err := pathRoomEventIDs(r)
	if err != nil {
		return err
	}
	body, err := readReport(r)
	if err != nil {
		return err
	}
	me := caller(r)
	notFound := mxerr.New(mxerr.NotFound, "the event was not found or you are not joined to its room")
	if m, err := s.rooms.rooms.Membership(ctx, roomID, me.UserID); err != nil {
		return err
	} else if m != "join" {
		return notFound
	}
	ev, err := s.visibleEvent(ctx, me.UserID, roomID, eventID)
	if mxerr.Is(err, mxerr.NotFound) || err == nil && ev.RedactedBecause != "" {
		return notFound
	} else if err != nil {
		return err
	}
	if err := s.storeReport(ctx, roomID, eventID, ev.Sender, me.UserID, body); err != nil {
		return err
	}
	return httpx.OK(w, httpx.EmptyObject)
}

// reportRoom records a report about a room; the caller need not be in it.
// Spec: client-server-api, "POST /_matrix/client/v3/rooms/{roomId}/report".
func (s *Server) reportRoom(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	roomID, err := pathRoomID(r)
	if err != nil {
		return err
	}
	body, err := readReport(r)
	if err != nil {
		return err
	}
	// The reason is required here (and may be blank), unlike for events.
	if body.Reason == nil {
		return mxerr.New(mxerr.MissingParam, "reason is required")
	}
	if _, err := s.rooms.rooms.RoomVersion(ctx, roomID); err != nil {
		return err
	}
	if err := s.storeReport(ctx, roomID, "", "", caller(r).UserID, body); err != nil {
		return err
	}
	return httpx.OK(w, httpx.EmptyObject)
}

// reportUser records a report about a user; the caller need not share a
// room with them ("servers MUST NOT restrict user reports based on
// whether or not the reporting user is joined to any rooms that the
// reported user is joined to"). A user of this server that does not
// exist is answered 200 like any other, as the spec allows ("Homeservers
// that wish to conceal this information MAY return 200 responses
// regardless of the existence of the reported user"), and nothing is
// stored: the answer does not tell who has an account. A user of another
// server cannot be checked here; the report is kept.
// Spec: client-server-api, "POST /_matrix/client/v3/users/{userId}/report".
func (s *Server) reportUser(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	target, err := unescapedParam(r, "userId")
	if err != nil {
		return err
	}
	if !validUserID(target) || !printableASCII(target) {
		return mxerr.New(mxerr.InvalidParam, "%q is not a valid user ID", target)
	}
	body, err := readReport(r)
	if err != nil {
		return err
	}
	// The reason is required here (and may be blank).
	if body.Reason == nil {
		return mxerr.New(mxerr.MissingParam, "reason is required")
	}
	reporter := caller(r).UserID
	if err := s.rooms.messageLimit.Allow(reporter); err != nil {
		return err
	}
	if local := s.localpart(target); local != "" {
		if _, found, err := lookupAccount(ctx, s.db.Reader(), local); err != nil {
			return err
		} else if !found {
			return httpx.OK(w, httpx.EmptyObject)
		}
	}
	err = s.db.Write(ctx, func(tx storage.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO user_reports (target_user_id, reporter, reason, received_ts)
			VALUES ($1, $2, $3, $4)`, target, reporter, *body.Reason, nowMillis())
		return err
	})
	if err != nil {
		return err
	}
	return httpx.OK(w, httpx.EmptyObject)
}

// printableASCII reports whether s holds only %x21-7E: every byte of a
// user ID is one (the historical localpart grammar, %x21-39 / %x3B-7E,
// is the widest; server names are ASCII). Spec: appendices, "User
// Identifiers".
func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

func readReport(r *http.Request) (*reportBody, error) {
	var body reportBody
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return nil, err
	}
	if body.Reason != nil && len(*body.Reason) > maxReportReason {
		return nil, mxerr.New(mxerr.InvalidParam, "reason is longer than %d bytes", maxReportReason)
	}
	// A PostgreSQL text column cannot hold NUL; SQLite would keep it.
	// Refused on both, so the engines answer alike.
	if body.Reason != nil && strings.ContainsRune(*body.Reason, 0) {
		return nil, mxerr.New(mxerr.InvalidParam, "reason must not contain NUL")
	}
	if body.Score != nil && (*body.Score < -100 || *body.Score > 0) {
		return nil, mxerr.New(mxerr.InvalidParam, "score must be between -100 and 0")
	}
	return &body, nil
}

// storeReport stores an event report (eventID and its sender set) or a
// room report (both "").
func (s *Server) storeReport(ctx context.Context, roomID, eventID, sender, reporter string, body *reportBody) error {
	if err := s.rooms.messageLimit.Allow(reporter); err != nil {
		return err
	}
	reason := ""
	if body.Reason != nil {
		reason = *body.Reason
	}
	return s.db.Write(ctx, func(tx storage.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO room_reports (room_id, event_id, event_sender, reporter, reason, score, received_ts)
			VALUES ($1, $2, $3, $4, $5, $6, $7)`, roomID, eventID, sender, reporter, reason, body.Score, nowMillis())
		return err
	})
}

// nowMillis is the current time in Unix milliseconds.
func nowMillis() int64 { return time.Now().UnixMilli() }
