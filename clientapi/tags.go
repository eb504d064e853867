package clientapi

import (
	"context"
	"encoding/json"
	"net/http"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// Room tags are the user's m.tag room account data: one JSON object,
// {"tags": {name: {"order": number, ...}, ...}}, per room. Every change
// to one tag rewrites that object, so each is a read-modify-write done in
// one transaction under the account data lock (updateRoomTagsTx): two
// changes at once, or a change and a server notice tagging the room, both
// land.
// Spec: client-server-api, "Room Tagging".

// tagAccountDataType is the room account data type that holds the tags.
const tagAccountDataType = "m.tag"

// maxTagLength bounds a tag name, in bytes.
// Spec: client-server-api, "Room Tagging": "The name of a tag MUST NOT
// exceed 255 bytes."
const maxTagLength = 255

func (s *Server) tagRoutes(r chi.Router) {
	handle(r, http.MethodGet, "/_matrix/client/v3/user/{userId}/rooms/{roomId}/tags", s.getRoomTags)
	handle(r, http.MethodPut, "/_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}", s.putRoomTag)
	handle(r, http.MethodDelete, "/_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}", s.deleteRoomTag)
}

// getRoomTags answers with the user's tags of a room ({"tags": {}} when
// there are none).
// Spec: client-server-api, "GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags".
func (s *Server) getRoomTags(w http.ResponseWriter, r *http.Request) error {
	local, roomID, err := s.accountDataOwner(r, "tags")
	if err != nil {
		return err
	}
	content, err := s.loadAccountData(r.Context(), local, roomID, tagAccountDataType)
	if err != nil {
		return err
	}
	_, tags := decodeTagContent(content)
	return httpx.OK(w, map[string]any{"tags": tags})
}

// putRoomTag adds a tag to a room, or replaces its data. The body is the
// tag's object; its order, if given, is a number in [0,1].
// Spec: client-server-api, "PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}";
// the Tag schema (definitions/tag.yaml): "order": a number "in a range
// [0,1]". A body that breaks the schema is M_BAD_JSON ("invalid values
// for keys", "Common error codes").
func (s *Server) putRoomTag(w http.ResponseWriter, r *http.Request) error {
	local, roomID, tag, err := s.tagTarget(r)
	if err != nil {
		return err
	}
	body, err := httpx.ReadBody(r)
	if err != nil {
		return err
	}
	data, err := accountDataContent(body)
	if err != nil {
		return err
	}
	if err := checkTagData(data); err != nil {
		return err
	}
	err = s.db.Write(r.Context(), func(tx storage.Tx) error {
		return s.updateRoomTagsTx(r.Context(), tx, local, roomID, func(tags map[string]json.RawMessage) bool {
			if old, ok := tags[tag]; ok && string(old) == string(data) {
				return false
			}
			tags[tag] = data
			return true
		})
	})
	if err != nil {
		return err
	}
	return httpx.OK(w, httpx.EmptyObject)
}

// deleteRoomTag removes a tag from a room. Removing a tag the room does
// not have succeeds and changes nothing.
// Spec: client-server-api, "DELETE /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}".
func (s *Server) deleteRoomTag(w http.ResponseWriter, r *http.Request) error {
	local, roomID, tag, err := s.tagTarget(r)
	if err != nil {
		return err
	}
	err = s.db.Write(r.Context(), func(tx storage.Tx) error {
		return s.updateRoomTagsTx(r.Context(), tx, local, roomID, func(tags map[string]json.RawMessage) bool {
			if _, ok := tags[tag]; !ok {
				return false
			}
			delete(tags, tag)
			return true
		})
	})
	if err != nil {
		return err
	}
	return httpx.OK(w, httpx.EmptyObject)
}

// tagTarget checks the caller, the room and the tag name of a PUT or
// DELETE of a tag.
func (s *Server) tagTarget(r *http.Request) (local, roomID, tag string, err error) {
	if local, roomID, err = s.accountDataOwner(r, "tags"); err != nil {
		return "", "", "", err
	}
	if tag, err = unescapedParam(r, "tag"); err != nil {
		return "", "", "", err
	}
	if tag == "" || len(tag) > maxTagLength || !utf8.ValidString(tag) {
		return "", "", "", mxerr.New(mxerr.InvalidParam, "a tag name must be 1 to %d bytes of UTF-8", maxTagLength)
	}
	return local, roomID, tag, nil
}

// checkTagData checks a tag's object (already known to be a JSON object)
// against the Tag schema: order, if present, is a number in [0,1].
func checkTagData(data json.RawMessage) error {
	var fields map[string]any
	if err := json.Unmarshal(data, &fields); err != nil {
		return mxerr.New(mxerr.BadJSON, "the tag must be a JSON object")
	}
	order, ok := fields["order"]
	if !ok {
		return nil
	}
	if n, isNumber := order.(float64); !isNumber || n < 0 || n > 1 {
		return mxerr.New(mxerr.BadJSON, "order must be a number between 0 and 1")
	}
	return nil
}

// decodeTagContent splits an m.tag content into its fields and its tags.
// Content that is absent, deleted ({}) or whose tags is not an object
// gives no tags; its other fields are kept.
func decodeTagContent(content json.RawMessage) (fields, tags map[string]json.RawMessage) {
	fields = map[string]json.RawMessage{}
	tags = map[string]json.RawMessage{}
	if len(content) > 0 {
		_ = json.Unmarshal(content, &fields)
	}
	if raw, ok := fields["tags"]; ok {
		if err := json.Unmarshal(raw, &tags); err != nil || tags == nil {
			tags = map[string]json.RawMessage{}
		}
	}
	return fields, tags
}

// updateRoomTagsTx is the one writer of tags: the tag endpoints and the
// server notices room's m.server_notice tag both go through it. Inside
// tx it takes the account data lock, reads the user's m.tag of roomID,
// lets change edit the tags, and, if change reports a change, stores the
// new m.tag at a new account data position (waking /sync).
func (s *Server) updateRoomTagsTx(ctx context.Context, tx storage.Tx, local, roomID string, change func(tags map[string]json.RawMessage) bool) error {
	// The lock comes before the read: two concurrent updates must not
	// both start from the same old tags.
	if err := lockAccountData(ctx, s.db, tx); err != nil {
		return err
	}
	var raw string
	err := tx.QueryRow(ctx, `SELECT content FROM account_data WHERE localpart = $1 AND room_id = $2 AND type = $3`,
		local, roomID, tagAccountDataType).Scan(&raw)
	if err != nil && !storage.IsNoRows(err) {
		return err
	}
	fields, tags := decodeTagContent(json.RawMessage(raw))
	if !change(tags) {
		return nil
	}
	encodedTags, err := json.Marshal(tags)
	if err != nil {
		return err
	}
	fields["tags"] = encodedTags
	content, err := json.Marshal(fields)
	if err != nil {
		return err
	}
	_, err = s.storeAccountDataTx(ctx, tx, local, roomID, tagAccountDataType, content)
	return err
}
