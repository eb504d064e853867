package clientapi

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
)

// The administrators' side of the report queues, in the shape of
// Synapse's admin API (admin tools such as synapse-admin speak it):
//
//	GET    /_synapse/admin/v1/event_reports[?from&limit&dir&user_id&room_id&sender_user_id]
//	GET    /_synapse/admin/v1/event_reports/{reportId}
//	DELETE /_synapse/admin/v1/event_reports/{reportId}
//
// (sender_user_id: the reported event's sender, exactly), and the same
// three for room_reports (filters user_id, room_id) and
// user_reports (filters user_id, target_user_id). Only server
// administrators may call them: anyone else is refused with 403
// M_FORBIDDEN before any parameter is read or report looked up. Paging is
// by offset: `from` is how many reports to skip (0 by default), `limit`
// the page size (100 by default, at most maxReportPage), `dir` b (newest
// first, the default) or f. The answer carries `total`, the number of
// reports matching the filters, and the next `from` (as `next_token`,
// or `next_batch` for room reports, as Synapse names them) when there
// are more.

// defaultReportPage is the page size when `limit` is absent.
const defaultReportPage = 100

// reportAdminKinds maps the admin paths to their queues.
var reportAdminKinds = []struct {
	path string
	kind ReportKind
}{
	{"event_reports", EventReports},
	{"room_reports", RoomReports},
	{"user_reports", UserReports},
}

func (s *Server) reportAdminRoutes(r chi.Router) {
	for _, k := range reportAdminKinds {
		kind, base := k.kind, "/_synapse/admin/v1/"+k.path
		handle(r, http.MethodGet, base, func(w http.ResponseWriter, r *http.Request) error {
			return s.listReportsAdmin(w, r, kind)
		})
		handle(r, http.MethodGet, base+"/{reportId}", func(w http.ResponseWriter, r *http.Request) error {
			return s.showReportAdmin(w, r, kind)
		})
		handle(r, http.MethodDelete, base+"/{reportId}", func(w http.ResponseWriter, r *http.Request) error {
			return s.deleteReportAdmin(w, r, kind)
		})
	}
}

// requireAdmin refuses a caller who is not a server administrator.
func (s *Server) requireAdmin(r *http.Request) error {
	admin, err := s.isAdmin(r.Context(), caller(r).UserID)
	if err != nil {
		return err
	}
	if !admin {
		return mxerr.New(mxerr.Forbidden, "only server administrators may read or delete reports")
	}
	return nil
}

func (s *Server) listReportsAdmin(w http.ResponseWriter, r *http.Request, kind ReportKind) error {
	if err := s.requireAdmin(r); err != nil {
		return err
	}
	q, err := parseReportQuery(r, kind)
	if err != nil {
		return err
	}
	reports, total, err := listReports(r.Context(), s.db, q)
	if err != nil {
		return err
	}
	rooms := map[string]*reportRoomInfo{}
	out := make([]map[string]any, 0, len(reports))
	for _, rep := range reports {
		obj, err := s.reportJSON(r.Context(), rep, rooms, false)
		if err != nil {
			return err
		}
		out = append(out, obj)
	}
	listKey, nextKey := string(kind)+"_reports", "next_token"
	if kind == RoomReports {
		nextKey = "next_batch"
	}
	resp := map[string]any{listKey: out, "total": total}
	if q.From+q.Limit < total {
		resp[nextKey] = q.From + int64(len(reports))
	}
	return httpx.OK(w, resp)
}

func (s *Server) showReportAdmin(w http.ResponseWriter, r *http.Request, kind ReportKind) error {
	if err := s.requireAdmin(r); err != nil {
		return err
	}
	id, err := pathReportID(r)
	if err != nil {
		return err
	}
	rep, err := getReport(r.Context(), s.db.Reader(), kind, id)
	if err != nil {
		return err
	}
	obj, err := s.reportJSON(r.Context(), rep, map[string]*reportRoomInfo{}, true)
	if err != nil {
		return err
	}
	return httpx.OK(w, obj)
}

func (s *Server) deleteReportAdmin(w http.ResponseWriter, r *http.Request, kind ReportKind) error {
	if err := s.requireAdmin(r); err != nil {
		return err
	}
	id, err := pathReportID(r)
	if err != nil {
		return err
	}
	if err := deleteReport(r.Context(), s.db, kind, id); err != nil {
		return err
	}
	return httpx.OK(w, httpx.EmptyObject)
}

// parseReportQuery reads the list parameters; a malformed one is 400
// M_INVALID_PARAM.
func parseReportQuery(r *http.Request, kind ReportKind) (ReportQuery, error) {
	params := r.URL.Query()
	q := ReportQuery{Kind: kind, Limit: defaultReportPage,
		Reporter: params.Get("user_id"), RoomID: params.Get("room_id"), TargetUserID: params.Get("target_user_id"),
		Sender: params.Get("sender_user_id")}
	if v := params.Get("from"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return q, mxerr.New(mxerr.InvalidParam, "from must be an integer of at least 0")
		}
		q.From = n
	}
	if v := params.Get("limit"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 {
			return q, mxerr.New(mxerr.InvalidParam, "limit must be a positive integer")
		}
		q.Limit = min(n, maxReportPage)
	}
	switch params.Get("dir") {
	case "", "b":
	case "f":
		q.Forwards = true
	default:
		return q, mxerr.New(mxerr.InvalidParam, "dir must be b or f")
	}
	return q, nil
}

// pathReportID reads {reportId}: a report ID is an integer of at least 0.
func pathReportID(r *http.Request) (int64, error) {
	id, err := strconv.ParseInt(chi.URLParam(r, "reportId"), 10, 64)
	if err != nil || id < 0 {
		return 0, mxerr.New(mxerr.InvalidParam, "the report ID must be an integer of at least 0")
	}
	return id, nil
}

// reportRoomInfo is what a report shows of its room: name, canonical
// alias and topic from the current state, each nil when unset.
type reportRoomInfo struct {
	name, alias, topic *string
}

// roomInfo reads the room's public state (what the spec lets anyone
// about to join see); a room this server does not know has no info.
func (s *Server) roomInfo(ctx context.Context, roomID string, cache map[string]*reportRoomInfo) (*reportRoomInfo, error) {
	if info, ok := cache[roomID]; ok {
		return info, nil
	}
	info := &reportRoomInfo{}
	cache[roomID] = info
	state, err := s.rooms.rooms.PublicState(ctx, roomID, []string{"m.room.name", "m.room.canonical_alias", "m.room.topic"})
	if mxerr.Is(err, mxerr.NotFound) {
		return info, nil
	} else if err != nil {
		return nil, err
	}
	field := func(content json.RawMessage, key string) *string {
		var fields map[string]json.RawMessage
		var v string
		if json.Unmarshal(content, &fields) != nil || json.Unmarshal(fields[key], &v) != nil || v == "" {
			return nil
		}
		return &v
	}
	for _, ev := range state {
		if ev.StateKey == nil || *ev.StateKey != "" {
			continue
		}
		switch ev.Type {
		case "m.room.name":
			info.name = field(ev.Content, "name")
		case "m.room.canonical_alias":
			info.alias = field(ev.Content, "alias")
		case "m.room.topic":
			info.topic = field(ev.Content, "topic")
		}
	}
	return info, nil
}

// reportJSON renders a report as Synapse's admin API does. An event
// report shows the reported event's sender, recorded with the report,
// and (with withEvent) the event itself as the reporter sees it now: the
// reporter could see the event when they reported it, and an
// administrator is given no wider view of a room's history than that.
// When the reporter can no longer see it (they left a room whose history
// is hidden from former members, or the event is gone), event_json is
// null, and so is sender for a report made before senders were recorded.
func (s *Server) reportJSON(ctx context.Context, rep Report, rooms map[string]*reportRoomInfo, withEvent bool) (map[string]any, error) {
	obj := map[string]any{
		"id":          rep.ID,
		"received_ts": rep.ReceivedTS,
		"user_id":     rep.Reporter,
		"reason":      rep.Reason,
	}
	if rep.Kind == UserReports {
		obj["target_user_id"] = rep.TargetUserID
		return obj, nil
	}
	obj["room_id"] = rep.RoomID
	info, err := s.roomInfo(ctx, rep.RoomID, rooms)
	if err != nil {
		return nil, err
	}
	obj["name"], obj["canonical_alias"] = info.name, info.alias
	if rep.Kind == RoomReports {
		obj["topic"] = info.topic
		return obj, nil
	}
	obj["event_id"], obj["score"], obj["sender"] = rep.EventID, rep.Score, nil
	if rep.Sender != "" {
		obj["sender"] = rep.Sender
		if !withEvent {
			return obj, nil
		}
	}
	if withEvent {
		obj["event_json"] = nil
	}
	ev, err := s.rooms.rooms.Event(ctx, rep.Reporter, rep.EventID)
	if mxerr.Is(err, mxerr.NotFound) || mxerr.Is(err, mxerr.Forbidden) {
		return obj, nil
	} else if err != nil {
		return nil, err
	}
	obj["sender"] = ev.Sender
	if withEvent {
		obj["event_json"] = ev.JSON
	}
	return obj, nil
}
