package clientapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// ReceiptStream is the stream name Deps.Notify hears for receipts.
const ReceiptStream = "receipts"

// receiptLock is the PostgreSQL advisory lock that makes receipt
// positions commit in order (see accountDataLock).
const receiptLock = 4242102

// Receipt is one read receipt as the sync component reads it.
type Receipt struct {
	RoomID string
	UserID string
	// Type is m.read or m.read.private.
	Type    string
	EventID string
	// ThreadID is "" for an unthreaded receipt, "main" or a thread root.
	ThreadID string
	TS       int64
	// Position is the receipt's stream position.
	Position int64
}

// ReceiptsSince returns the receipts in roomIDs whose latest change has
// a stream position in (since, latest], in position order, and latest,
// the receipt stream head when read. m.read.private receipts are
// returned only to their own user (forUserID).
// Spec: client-server-api, "Receipts", "Private read receipts".
func (s *Server) ReceiptsSince(ctx context.Context, forUserID string, roomIDs []string, since int64) (receipts []Receipt, latest int64, err error) {
	err = s.db.Read(ctx, func(q storage.Querier) error {
		if err := q.QueryRow(ctx, `SELECT COALESCE(MAX(position), 0) FROM receipts`).Scan(&latest); err != nil {
			return err
		}
		if len(roomIDs) == 0 {
			return nil
		}
		var b strings.Builder
		args := []any{since, latest, forUserID}
		b.WriteString(`SELECT room_id, user_id, receipt_type, thread_id, event_id, ts, position FROM receipts
			WHERE position > $1 AND position <= $2 AND (receipt_type <> 'm.read.private' OR user_id = $3) AND room_id IN (`)
		for i, id := range roomIDs {
			if i > 0 {
				b.WriteString(", ")
			}
			args = append(args, id)
			fmt.Fprintf(&b, "$%d", len(args))
		}
		b.WriteString(") ORDER BY position")
		rows, err := q.Query(ctx, b.String(), args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var r Receipt
			if err := rows.Scan(&r.RoomID, &r.UserID, &r.Type, &r.ThreadID, &r.EventID, &r.TS, &r.Position); err != nil {
				return err
			}
			receipts = append(receipts, r)
		}
		return rows.Err()
	})
	return receipts, latest, err
}

// storeReceipt writes one receipt at a new stream position; the stream
// is told after commit.
func (s *Server) storeReceipt(ctx context.Context, r Receipt) error {
	return s.db.Write(ctx, func(tx storage.Tx) error {
		if s.db.Engine() == storage.Postgres {
			if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, receiptLock); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, `DELETE FROM receipts WHERE room_id = $1 AND user_id = $2 AND receipt_type = $3 AND thread_id = $4`,
			r.RoomID, r.UserID, r.Type, r.ThreadID); err != nil {
			return err
		}
		var pos int64
		if err := tx.QueryRow(ctx, `INSERT INTO receipts (room_id, user_id, receipt_type, thread_id, event_id, ts)
			VALUES ($1, $2, $3, $4, $5, $6) RETURNING position`,
			r.RoomID, r.UserID, r.Type, r.ThreadID, r.EventID, r.TS).Scan(&pos); err != nil {
			return err
		}
		tx.AfterCommit(func() { s.streamAdvanced(ReceiptStream, pos) })
		return nil
	})
}

// sendReceipt records a receipt or the fully-read marker.
// Spec: client-server-api, "POST /_matrix/client/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}".
func (s *Server) sendReceipt(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	roomID, eventID, err := pathRoomEventIDs(r)
	if err != nil {
		return err
	}
	receiptType, err := unescapedParam(r, "receiptType")
	if err != nil {
		return err
	}
	var body struct {
		ThreadID *json.RawMessage `json:"thread_id"`
	}
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return err
	}
	threadID := ""
	if body.ThreadID != nil {
		if json.Unmarshal(*body.ThreadID, &threadID) != nil || threadID == "" {
			return mxerr.New(mxerr.InvalidParam, "thread_id field must be a non-empty string")
		}
		if threadID != "main" && !strings.HasPrefix(threadID, "$") {
			return mxerr.New(mxerr.InvalidParam, "thread_id must be main or an event ID")
		}
	}
	me := caller(r)
	switch receiptType {
	case "m.read", "m.read.private":
	case "m.fully_read":
		if threadID != "" {
			return mxerr.New(mxerr.InvalidParam, "thread_id cannot be used with m.fully_read")
		}
	default:
		return mxerr.New(mxerr.InvalidParam, "unknown receipt type %q", receiptType)
	}
	if err := s.checkReadTarget(ctx, me.UserID, roomID, eventID); err != nil {
		return err
	}
	if threadID != "" {
		if err := s.checkReceiptThread(ctx, me.UserID, eventID, threadID); err != nil {
			return err
		}
	}
	if err := s.writeRead(ctx, me.UserID, roomID, receiptType, eventID, threadID); err != nil {
		return err
	}
	return httpx.OK(w, httpx.EmptyObject)
}

// maxThreadHops bounds how far threadOfEvent follows relations.
// Spec: client-server-api, "Threaded read receipts" ("a maximum of 3
// hops is recommended").
const maxThreadHops = 3

// checkReceiptThread refuses a threaded receipt whose event is not
// related to its thread_id: "main" for an event in a thread, or a thread
// root for an event that is neither that root nor in its thread. The
// event has been checked (in the room, visible to userID).
// Spec: client-server-api, "Threaded read receipts" (thread roots are in
// the main timeline); receipts.yaml, 400 "The event_id is not related to
// the thread_id" (M_INVALID_PARAM).
func (s *Server) checkReceiptThread(ctx context.Context, userID, eventID, threadID string) error {
	if threadID == eventID {
		return nil // the thread root itself
	}
	thread, err := s.threadOfEvent(ctx, userID, eventID)
	if err != nil {
		return err
	}
	if thread != threadID {
		return mxerr.New(mxerr.InvalidParam, "event %s is not in thread %s", eventID, threadID)
	}
	return nil
}

// threadOfEvent returns the thread eventID is in: the root of its
// m.thread relation, or, following its other relations (reactions,
// edits, replies by relation) up to maxThreadHops events, the root their
// m.thread relation names; else "main". A related event userID cannot
// see (or unknown here) ends the walk in the main timeline.
// Spec: client-server-api, "Threaded read receipts" (when an event is
// "in a thread").
func (s *Server) threadOfEvent(ctx context.Context, userID, eventID string) (string, error) {
	for hop := 0; hop <= maxThreadHops; hop++ {
		ev, err := s.rooms.rooms.Event(ctx, userID, eventID)
		if mxerr.Is(err, mxerr.NotFound) {
			return "main", nil
		}
		if err != nil {
			return "", err
		}
		rel, ok := relationOf(ev)
		if !ok {
			return "main", nil
		}
		if rel.RelType == "m.thread" {
			return rel.RelatesTo, nil
		}
		eventID = rel.RelatesTo
	}
	return "main", nil
}

// checkReadTarget refuses a receipt or read marker unless userID is
// joined to roomID and eventID is an event of roomID that userID can
// see: an unknown event, or one of another room, is M_NOT_FOUND (as for
// GET /rooms/{roomId}/event/{eventId}), and nothing is written.
// Spec: client-server-api, "Receipts" ("The event ID to acknowledge up
// to", an event of the room in the path), "Fully read markers".
func (s *Server) checkReadTarget(ctx context.Context, userID, roomID, eventID string) error {
	if err := s.requireJoined(ctx, roomID, userID); err != nil {
		return err
	}
	_, err := s.visibleEvent(ctx, userID, roomID, eventID)
	return err
}

// writeRead stores a checked receipt or m.fully_read marker, and sends a
// public receipt to the room's other servers.
func (s *Server) writeRead(ctx context.Context, userID, roomID, receiptType, eventID, threadID string) error {
	if receiptType == "m.fully_read" {
		// Spec: client-server-api, "Fully read markers": stored as room
		// account data.
		local := s.localpart(userID)
		_, err := s.storeAccountData(ctx, local, roomID, "m.fully_read", mustJSON(map[string]string{"event_id": eventID}))
		return err
	}
	receipt := Receipt{RoomID: roomID, UserID: userID, Type: receiptType, EventID: eventID, ThreadID: threadID, TS: nowMillis()}
	if err := s.storeReceipt(ctx, receipt); err != nil {
		return err
	}
	if receiptType == "m.read" {
		s.sendReceiptEDU(ctx, receipt) // m.read.private stays here
	}
	return nil
}

// setReadMarkers sets the fully-read marker and the read receipts in one call.
// Every event named is checked before anything is written, so a request
// naming one unknown event, or an event of another room, changes nothing.
// Spec: client-server-api, "POST /_matrix/client/v3/rooms/{roomId}/read_markers".
func (s *Server) setReadMarkers(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	roomID, err := pathRoomID(r)
	if err != nil {
		return err
	}
	var body map[string]*string
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return err
	}
	me := caller(r)
	types := []string{"m.fully_read", "m.read", "m.read.private"}
	for _, t := range types {
		eventID := body[t]
		if eventID == nil {
			continue
		}
		if !strings.HasPrefix(*eventID, "$") {
			return mxerr.New(mxerr.InvalidParam, "%s must be an event ID", t)
		}
		if err := s.checkReadTarget(ctx, me.UserID, roomID, *eventID); err != nil {
			return err
		}
	}
	for _, t := range types {
		if eventID := body[t]; eventID != nil {
			if err := s.writeRead(ctx, me.UserID, roomID, t, *eventID, ""); err != nil {
				return err
			}
		}
	}
	return httpx.OK(w, httpx.EmptyObject)
}

// ReceiptsAfter returns every receipt (m.read and m.read.private, all
// rooms and users) whose latest change has a stream position above
// since, at most limit, in position order. It is for server-side
// consumers of the receipt stream (push counts), never for clients.
func (s *Server) ReceiptsAfter(ctx context.Context, since int64, limit int) ([]Receipt, error) {
	rows, err := s.db.Reader().Query(ctx, `SELECT room_id, user_id, receipt_type, thread_id, event_id, ts, position
		FROM receipts WHERE position > $1 ORDER BY position LIMIT $2`, since, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Receipt
	for rows.Next() {
		var r Receipt
		if err := rows.Scan(&r.RoomID, &r.UserID, &r.Type, &r.ThreadID, &r.EventID, &r.TS, &r.Position); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}
