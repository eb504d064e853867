package clientapi

import (
	"context"
	"encoding/json"
	"net/http"
	"sort"
	"strings"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
)

// userDirectoryIndexerName is the user directory indexer's row in
// room_indexer_positions.
const userDirectoryIndexerName = "user_directory"

// User directory limits.
const (
	defaultUserDirectoryLimit = 10
	maxUserDirectoryLimit     = 100
	// maxUserDirectoryCandidates bounds the matches one search ranks.
	maxUserDirectoryCandidates = 1000
)

// indexUserDirectory is the user directory indexer's index function:
// member events move users in and out of rooms and refresh their
// directory entry; join rules and history visibility make a room's
// members findable by anyone, or not.
func (s *Server) indexUserDirectory(ctx context.Context, tx storage.Tx, ev *roomserver.Event) error {
	if ev.StateKey == nil {
		return nil
	}
	var c struct {
		Membership        string `json:"membership"`
		DisplayName       any    `json:"displayname"`
		AvatarURL         any    `json:"avatar_url"`
		JoinRule          string `json:"join_rule"`
		HistoryVisibility string `json:"history_visibility"`
	}
	if json.Unmarshal(ev.Content, &c) != nil {
		return nil
	}
	switch {
	case ev.Type == "m.room.join_rules" && *ev.StateKey == "":
		_, err := tx.Exec(ctx, `INSERT INTO user_directory_rooms (room_id, public_join, world_readable) VALUES ($1, $2, false)
			ON CONFLICT (room_id) DO UPDATE SET public_join = excluded.public_join`, ev.RoomID, c.JoinRule == "public")
		return err
	case ev.Type == "m.room.history_visibility" && *ev.StateKey == "":
		_, err := tx.Exec(ctx, `INSERT INTO user_directory_rooms (room_id, public_join, world_readable) VALUES ($1, false, $2)
			ON CONFLICT (room_id) DO UPDATE SET world_readable = excluded.world_readable`, ev.RoomID, c.HistoryVisibility == "world_readable")
		return err
	case ev.Type != "m.room.member":
		return nil
	}
	userID := *ev.StateKey
	if c.Membership == "join" && domainOf(userID) == s.serverName {
		// A local user's join of a room the directory knows nothing of:
		// a room joined over federation, whose earlier state came with
		// the join (no timeline events), or a room just created. Its
		// current state says who is in it and whether it is public.
		var known int
		if err := tx.QueryRow(ctx, `SELECT COUNT(*) FROM user_directory_rooms WHERE room_id = $1`, ev.RoomID).Scan(&known); err != nil {
			return err
		}
		if known == 0 {
			if err := s.indexUserDirectoryRoom(ctx, tx, ev.RoomID); err != nil {
				return err
			}
		}
	}
	if c.Membership != "join" {
		_, err := tx.Exec(ctx, `DELETE FROM user_directory_members WHERE room_id = $1 AND user_id = $2`, ev.RoomID, userID)
		return err
	}
	if _, err := tx.Exec(ctx, `INSERT INTO user_directory_members (room_id, user_id) VALUES ($1, $2)
		ON CONFLICT (room_id, user_id) DO NOTHING`, ev.RoomID, userID); err != nil {
		return err
	}
	// Local users are listed under their global profile, whatever name
	// they gave one room (a room-specific name must not leak to people
	// outside that room). Remote users have no profile here: their name
	// comes from member events in rooms anyone may see into.
	var name, avatar string
	if domainOf(userID) == s.serverName {
		profile := s.memberProfile(ctx, userID)
		name, _ = profile[fieldDisplayName].(string)
		avatar, _ = profile[fieldAvatarURL].(string)
	} else {
		var public bool
		err := tx.QueryRow(ctx, `SELECT public_join OR world_readable FROM user_directory_rooms WHERE room_id = $1`, ev.RoomID).Scan(&public)
		if err != nil && !storage.IsNoRows(err) {
			return err
		}
		if !public {
			_, err := tx.Exec(ctx, `INSERT INTO user_directory (user_id, display_name, avatar_url, search_text)
				VALUES ($1, '', '', $2) ON CONFLICT (user_id) DO NOTHING`, userID, userSearchText(userID, ""))
			return err
		}
		name, avatar = stringOr(c.DisplayName), stringOr(c.AvatarURL)
	}
	_, err := tx.Exec(ctx, `INSERT INTO user_directory (user_id, display_name, avatar_url, search_text)
		VALUES ($1, $2, $3, $4) ON CONFLICT (user_id) DO UPDATE SET display_name = excluded.display_name,
		avatar_url = excluded.avatar_url, search_text = excluded.search_text`, userID, name, avatar, userSearchText(userID, name))
	return err
}

// indexUserDirectoryRoom indexes the current state of roomID afresh: its
// join rule and history visibility, then its members (the room's rows
// first dropped, so that members who left go). It runs for rooms the
// directory first hears of and for rooms whose partial state was just
// completed (MSC3706: the resync brings every member the partial state
// lacked; Complement msc3902 "User directory is correctly updated once
// state re-sync completes").
func (s *Server) indexUserDirectoryRoom(ctx context.Context, tx storage.Tx, roomID string) error {
	state, err := s.rooms.rooms.PublicState(ctx, roomID, []string{"m.room.history_visibility", "m.room.join_rules", "m.room.member"})
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `INSERT INTO user_directory_rooms (room_id, public_join, world_readable) VALUES ($1, false, false)
		ON CONFLICT (room_id) DO NOTHING`, roomID); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `DELETE FROM user_directory_members WHERE room_id = $1`, roomID); err != nil {
		return err
	}
	// PublicState orders by type: the room's rules come before its
	// members, whose entries depend on them.
	for _, ev := range state {
		if err := s.indexUserDirectory(ctx, tx, ev); err != nil {
			return err
		}
	}
	return nil
}

// userSearchText is the search_text column: every word of the user ID
// and display name, lower-cased, each after a space.
func userSearchText(userID, displayName string) string {
	return " " + strings.Join(searchWords(userID+" "+displayName), " ")
}

// userDirectoryEntry is one search result.
type userDirectoryEntry struct {
	UserID      string `json:"user_id"`
	DisplayName string `json:"display_name,omitempty"`
	AvatarURL   string `json:"avatar_url,omitempty"`
	score       float64
}

// searchUserDirectory finds users by user ID or display name among the
// users the caller shares a room with and the members of rooms with a
// public join rule or world-readable history.
// Spec: client-server-api, "POST /_matrix/client/v3/user_directory/search".
func (s *Server) searchUserDirectory(w http.ResponseWriter, r *http.Request, ix *streamIndexer) error {
	ctx := r.Context()
	var req struct {
		SearchTerm *string `json:"search_term"`
		Limit      *int    `json:"limit"`
	}
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	if req.SearchTerm == nil {
		return mxerr.New(mxerr.BadJSON, "search_term is required")
	}
	limit := defaultUserDirectoryLimit
	if req.Limit != nil {
		if *req.Limit < 0 {
			return mxerr.New(mxerr.InvalidParam, "limit must not be negative")
		}
		limit = min(*req.Limit, maxUserDirectoryLimit)
	}
	if err := ix.catchUp(ctx); err != nil {
		return err
	}
	found, err := s.userDirectoryMatches(ctx, caller(r).UserID, searchWords(*req.SearchTerm))
	if err != nil {
		return err
	}
	limited := len(found) > limit
	if limited {
		found = found[:limit]
	}
	return httpx.OK(w, map[string]any{"results": found, "limited": limited})
}

// userDirectoryMatches returns the users visible to searcher whose user
// ID or display name has a word starting with each of words, best
// matches first.
func (s *Server) userDirectoryMatches(ctx context.Context, searcher string, words []string) ([]userDirectoryEntry, error) {
	found := []userDirectoryEntry{}
	if len(words) == 0 {
		return found, nil
	}
	args := &sqlArgs{list: []any{searcher}}
	var b strings.Builder
	b.WriteString(`SELECT d.user_id, d.display_name, d.avatar_url FROM user_directory d WHERE (
		EXISTS (SELECT 1 FROM user_directory_members m JOIN user_directory_rooms r ON r.room_id = m.room_id
			WHERE m.user_id = d.user_id AND (r.public_join OR r.world_readable))
		OR d.user_id <> $1 AND EXISTS (SELECT 1 FROM user_directory_members mine
			JOIN user_directory_members theirs ON theirs.room_id = mine.room_id
			WHERE mine.user_id = $1 AND theirs.user_id = d.user_id))`)
	for _, w := range words {
		// Words are letters and digits only: nothing to escape for LIKE.
		b.WriteString(" AND d.search_text LIKE " + args.add("% "+w+"%"))
	}
	b.WriteString(" ORDER BY d.user_id LIMIT " + args.add(maxUserDirectoryCandidates))
	rows, err := s.db.Reader().Query(ctx, b.String(), args.list...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var e userDirectoryEntry
		if err := rows.Scan(&e.UserID, &e.DisplayName, &e.AvatarURL); err != nil {
			return nil, err
		}
		e.score = userMatchScore(e, words)
		found = append(found, e)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	sort.SliceStable(found, func(i, j int) bool { return found[i].score > found[j].score })
	return found, nil
}

// userMatchScore ranks a match: whole-word matches above prefix
// matches, then users with a display name (the spec orders "by rank and
// then whether or not profile info is available").
func userMatchScore(e userDirectoryEntry, words []string) float64 {
	have := searchWords(e.UserID + " " + e.DisplayName)
	score := 0.0
	for _, w := range words {
		if contains(have, w) {
			score += 2
		} else {
			score++
		}
	}
	if e.DisplayName != "" {
		score += 0.5
	}
	return score
}
