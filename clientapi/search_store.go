package clientapi

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strings"
	"unicode"

	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
)

// searchIndexerName is the search indexer's row in room_indexer_positions.
const searchIndexerName = "search"

// The searchable keys, and the event type each is read from.
// Spec: client-server-api, "room_events".
var searchKeyTypes = map[string]string{
	"content.body":  "m.room.message",
	"content.name":  "m.room.name",
	"content.topic": "m.room.topic",
}

// searchDocument returns the key and text under which ev is searchable;
// ok is false for events that are not (other types, redacted, empty).
func searchDocument(ev *roomserver.Event) (key, text string, ok bool) {
	if ev.RedactedBecause != "" {
		return "", "", false
	}
	var c struct {
		Body   any `json:"body"`
		Name   any `json:"name"`
		Topic  any `json:"topic"`
		MTopic struct {
			Text []struct {
				Body     any    `json:"body"`
				MimeType string `json:"mimetype"`
			} `json:"m.text"`
		} `json:"m.topic"`
	}
	if json.Unmarshal(ev.Content, &c) != nil {
		return "", "", false
	}
	isState := ev.StateKey != nil
	switch {
	case ev.Type == "m.room.message" && !isState:
		key, text = "content.body", stringOr(c.Body)
	case ev.Type == "m.room.name" && isState && *ev.StateKey == "":
		key, text = "content.name", stringOr(c.Name)
	case ev.Type == "m.room.topic" && isState && *ev.StateKey == "":
		// Spec: "content.topic as well as the body of the text/plain
		// representation in content['m.topic']".
		key, text = "content.topic", stringOr(c.Topic)
		for _, t := range c.MTopic.Text {
			if body := stringOr(t.Body); (t.MimeType == "" || t.MimeType == "text/plain") && body != text {
				text = strings.TrimSpace(text + "\n" + body)
			}
		}
	}
	return key, text, strings.TrimSpace(text) != ""
}

func stringOr(v any) string {
	s, _ := v.(string)
	return s
}

// indexSearchable is the search indexer's index function: it records
// ev's searchable text, or removes the text of the event ev redacts.
func (s *Server) indexSearchable(ctx context.Context, tx storage.Tx, ev *roomserver.Event) error {
	if ev.Type == "m.room.redaction" && ev.Redacts != "" {
		if s.db.Engine() == storage.SQLite {
			if _, err := tx.Exec(ctx, `DELETE FROM room_search_fts WHERE docid IN
				(SELECT stream_pos FROM room_search_events WHERE event_id = $1 AND room_id = $2)`, ev.Redacts, ev.RoomID); err != nil {
				return err
			}
		}
		_, err := tx.Exec(ctx, `DELETE FROM room_search_events WHERE event_id = $1 AND room_id = $2`, ev.Redacts, ev.RoomID)
		return err
	}
	key, text, ok := searchDocument(ev)
	if !ok {
		return nil
	}
	if s.db.Engine() == storage.Postgres {
		_, err := tx.Exec(ctx, `INSERT INTO room_search_events
			(stream_pos, event_id, room_id, sender, event_type, search_key, body, vector)
			VALUES ($1, $2, $3, $4, $5, $6, $7, to_tsvector('english', $7)) ON CONFLICT (event_id) DO NOTHING`,
			ev.StreamPos, ev.EventID, ev.RoomID, ev.Sender, ev.Type, key, text)
		return err
	}
	res, err := tx.Exec(ctx, `INSERT INTO room_search_events
		(stream_pos, event_id, room_id, sender, event_type, search_key)
		VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING`,
		ev.StreamPos, ev.EventID, ev.RoomID, ev.Sender, ev.Type, key)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil || n == 0 {
		return err // already indexed
	}
	_, err = tx.Exec(ctx, `INSERT INTO room_search_fts (docid, body) VALUES ($1, $2)`, ev.StreamPos, text)
	return err
}

// searchQuery selects indexed events.
type searchQuery struct {
	Term string
	// RoomIDs, Keys and Types restrict the search; each is non-empty.
	RoomIDs, Keys, Types []string
	// Senders (nil: any) and NotSenders filter by sender.
	Senders, NotSenders []string
	ByRank              bool
	// Before (recent order) is the position the page starts below
	// (noBefore: from the newest). Backfilled history sits below the
	// stream, at negative positions. Offset (rank order) is how many
	// ranked rows earlier pages consumed.
	Before int64
	Offset int
	Limit  int
}

// searchHit is one matching indexed event.
type searchHit struct {
	EventID, RoomID string
	StreamPos       int64
	Rank            float64
	// Highlights are the words of the event that matched.
	Highlights []string
}

// noBefore is searchQuery.Before of a first page: above every position.
const noBefore = math.MaxInt64

// maxRankCandidates bounds how many of the most recent matches SQLite
// ranks in Go for one rank-ordered page.
const maxRankCandidates = 5000

// headlineOptions makes PostgreSQL's ts_headline mark every matching
// word of the text between \x01 and \x02.
const headlineOptions = "StartSel=\x01, StopSel=\x02, HighlightAll=TRUE"

// searchFrom is the FROM and match condition of both engines' queries:
// the match expression is $1.
func (s *Server) searchFrom() string {
	if s.db.Engine() == storage.Postgres {
		return ` FROM room_search_events e, websearch_to_tsquery('english', $1) AS q (query)
			WHERE e.vector @@ q.query`
	}
	return ` FROM room_search_fts JOIN room_search_events e ON e.stream_pos = room_search_fts.docid
		WHERE room_search_fts MATCH $1`
}

// searchMatchArg is the match expression for $1: the term itself for
// PostgreSQL's websearch_to_tsquery, an FTS4 query for SQLite ("" when
// the term has no words).
func (s *Server) searchMatchArg(term string) string {
	if s.db.Engine() == storage.Postgres {
		return term
	}
	return fts4Query(term)
}

// searchConditions appends q's filters to the arguments after $1.
func searchConditions(q searchQuery, args *sqlArgs) string {
	var b strings.Builder
	b.WriteString(args.in(" AND e.room_id", q.RoomIDs, false))
	b.WriteString(args.in(" AND e.search_key", q.Keys, false))
	b.WriteString(args.in(" AND e.event_type", q.Types, false))
	if q.Senders != nil {
		b.WriteString(args.in(" AND e.sender", q.Senders, false))
	}
	if len(q.NotSenders) > 0 {
		b.WriteString(args.in(" AND e.sender", q.NotSenders, true))
	}
	return b.String()
}

// searchCount counts the matches of q, without regard to pagination or
// history visibility: the spec's "approximate count".
func (s *Server) searchCount(ctx context.Context, q searchQuery) (int, error) {
	match := s.searchMatchArg(q.Term)
	if match == "" {
		return 0, nil
	}
	args := &sqlArgs{list: []any{match}}
	query := `SELECT COUNT(*)` + s.searchFrom() + searchConditions(q, args)
	var n int
	err := s.db.Reader().QueryRow(ctx, query, args.list...).Scan(&n)
	return n, err
}

// searchPage reads one page of matches of q: the newest below q.Before,
// or the best ranked after q.Offset.
func (s *Server) searchPage(ctx context.Context, q searchQuery) ([]searchHit, error) {
	match := s.searchMatchArg(q.Term)
	if match == "" {
		return nil, nil
	}
	if s.db.Engine() == storage.Postgres {
		return s.searchPagePostgres(ctx, q, match)
	}
	return s.searchPageSQLite(ctx, q, match)
}

func (s *Server) searchPagePostgres(ctx context.Context, q searchQuery, match string) ([]searchHit, error) {
	args := &sqlArgs{list: []any{match, headlineOptions}}
	query := `SELECT e.event_id, e.room_id, e.stream_pos, ts_rank(e.vector, q.query),
		ts_headline('english', e.body, q.query, $2)` + s.searchFrom() + searchConditions(q, args)
	if q.ByRank {
		query += ` ORDER BY 4 DESC, e.stream_pos DESC LIMIT ` + args.add(q.Limit) + ` OFFSET ` + args.add(q.Offset)
	} else {
		if q.Before != noBefore {
			query += ` AND e.stream_pos < ` + args.add(q.Before)
		}
		query += ` ORDER BY e.stream_pos DESC LIMIT ` + args.add(q.Limit)
	}
	rows, err := s.db.Reader().Query(ctx, query, args.list...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []searchHit
	for rows.Next() {
		var h searchHit
		var headline string
		if err := rows.Scan(&h.EventID, &h.RoomID, &h.StreamPos, &h.Rank, &headline); err != nil {
			return nil, err
		}
		h.Highlights = markedWords(headline)
		out = append(out, h)
	}
	return out, rows.Err()
}

func (s *Server) searchPageSQLite(ctx context.Context, q searchQuery, match string) ([]searchHit, error) {
	args := &sqlArgs{list: []any{match}}
	query := `SELECT e.event_id, e.room_id, e.stream_pos, matchinfo(room_search_fts, 'pcnalx'),
		offsets(room_search_fts), room_search_fts.body` + s.searchFrom() + searchConditions(q, args)
	if !q.ByRank && q.Before != noBefore {
		query += ` AND e.stream_pos < ` + args.add(q.Before)
	}
	limit := q.Limit
	if q.ByRank {
		limit = maxRankCandidates
	}
	query += ` ORDER BY e.stream_pos DESC LIMIT ` + args.add(limit)
	rows, err := s.db.Reader().Query(ctx, query, args.list...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []searchHit
	for rows.Next() {
		var h searchHit
		var info []byte
		var offsets, body string
		if err := rows.Scan(&h.EventID, &h.RoomID, &h.StreamPos, &info, &offsets, &body); err != nil {
			return nil, err
		}
		h.Rank = bm25(info)
		h.Highlights = offsetWords(offsets, body)
		out = append(out, h)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if q.ByRank {
		sort.SliceStable(out, func(i, j int) bool {
			if out[i].Rank != out[j].Rank {
				return out[i].Rank > out[j].Rank
			}
			return out[i].StreamPos > out[j].StreamPos
		})
		start := min(q.Offset, len(out))
		out = out[start:min(start+q.Limit, len(out))]
	}
	return out, nil
}

// sqlArgs collects the arguments of a query built piece by piece.
type sqlArgs struct{ list []any }

// add appends v and returns its placeholder.
func (a *sqlArgs) add(v any) string {
	a.list = append(a.list, v)
	return fmt.Sprintf("$%d", len(a.list))
}

// in renders "<col> [NOT] IN ($i, ...)" for vals (never empty: an empty
// list matches nothing, or everything when negated).
func (a *sqlArgs) in(col string, vals []string, negate bool) string {
	if len(vals) == 0 {
		if negate {
			return ""
		}
		return " AND 1 = 0"
	}
	var b strings.Builder
	b.WriteString(col)
	if negate {
		b.WriteString(" NOT")
	}
	b.WriteString(" IN (")
	for i, v := range vals {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(a.add(v))
	}
	b.WriteString(")")
	return b.String()
}

// searchWords splits text into lower-cased words: runs of letters and
// digits, as SQLite's unicode61 tokenizer does.
func searchWords(text string) []string {
	return strings.FieldsFunc(strings.ToLower(text), func(r rune) bool {
		return !unicode.IsLetter(r) && !unicode.IsDigit(r)
	})
}

// fts4Query turns a search term into an FTS4 MATCH expression: every
// word must appear, as a word prefix ("redact" finds "redacted", as
// PostgreSQL's stemming does); a "quoted phrase" must appear as is.
// Only words reach the expression, so no input is read as an operator.
func fts4Query(term string) string {
	var parts []string
	for i, chunk := range strings.Split(term, `"`) {
		words := searchWords(chunk)
		if len(words) == 0 {
			continue
		}
		if i%2 == 1 { // inside quotes
			parts = append(parts, `"`+strings.Join(words, " ")+`"`)
			continue
		}
		for _, w := range words {
			parts = append(parts, w+"*")
		}
	}
	return strings.Join(parts, " ")
}

// bm25 scores a row from FTS4's matchinfo 'pcnalx' (one column): the
// Okapi BM25 sum over the query's phrases, k1 = 1.2, b = 0.75, with the
// non-negative IDF variant.
func bm25(info []byte) float64 {
	const k1, b = 1.2, 0.75
	at := func(i int) float64 {
		if 4*i+4 > len(info) {
			return 0
		}
		return float64(binary.NativeEndian.Uint32(info[4*i:]))
	}
	phrases, cols := int(at(0)), int(at(1))
	if cols != 1 {
		return 0
	}
	docs, avgLen, length := at(2), at(3), at(4)
	if avgLen == 0 {
		avgLen = 1
	}
	score := 0.0
	for p := 0; p < phrases; p++ {
		hits, withHits := at(5+3*p), at(5+3*p+2)
		idf := math.Log((docs-withHits+0.5)/(withHits+0.5) + 1)
		score += idf * hits * (k1 + 1) / (hits + k1*(1-b+b*length/avgLen))
	}
	return score
}

// offsetWords reads the matched words of body from FTS4's offsets():
// groups of "column term byte-offset byte-size".
func offsetWords(offsets, body string) []string {
	f := strings.Fields(offsets)
	var out []string
	for i := 0; i+3 < len(f); i += 4 {
		var off, size int
		if _, err := fmt.Sscan(f[i+2], &off); err != nil {
			continue
		}
		if _, err := fmt.Sscan(f[i+3], &size); err != nil {
			continue
		}
		if off >= 0 && size > 0 && off+size <= len(body) {
			out = append(out, body[off:off+size])
		}
	}
	return out
}

// markedWords reads the words ts_headline marked with headlineOptions.
func markedWords(headline string) []string {
	var out []string
	for {
		start := strings.IndexByte(headline, '\x01')
		if start < 0 {
			return out
		}
		headline = headline[start+1:]
		end := strings.IndexByte(headline, '\x02')
		if end < 0 {
			return out
		}
		out = append(out, headline[:end])
		headline = headline[end+1:]
	}
}
