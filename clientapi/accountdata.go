package clientapi

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// maxAccountDataTypeLength bounds an account data type, in bytes, like
// event types elsewhere in the spec.
const maxAccountDataTypeLength = 255

// serverManagedAccountData lists the account data types clients may read
// but not set through the account data API.
// Spec: client-server-api, "Client Config", "Server Behaviour".
var serverManagedAccountData = map[string]bool{
	"m.fully_read": true,
	"m.push_rules": true,
}

func (s *Server) accountDataRoutes(r chi.Router) {
	handle(r, http.MethodGet, "/_matrix/client/v3/user/{userId}/account_data/{type}", s.getAccountData)
	handle(r, http.MethodPut, "/_matrix/client/v3/user/{userId}/account_data/{type}", s.putAccountData)
	handle(r, http.MethodGet, "/_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}", s.getAccountData)
	handle(r, http.MethodPut, "/_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}", s.putAccountData)
	// MSC3391: deleting account data.
	const msc3391 = "/_matrix/client/unstable/org.matrix.msc3391"
	handle(r, http.MethodDelete, msc3391+"/user/{userId}/account_data/{type}", s.deleteAccountData)
	handle(r, http.MethodDelete, msc3391+"/user/{userId}/rooms/{roomId}/account_data/{type}", s.deleteAccountData)
}

// getAccountData answers with the content of one global or per-room
// account data type.
// Spec: client-server-api, "GET /_matrix/client/v3/user/{userId}/account_data/{type}"
// and "GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}".
func (s *Server) getAccountData(w http.ResponseWriter, r *http.Request) error {
	local, roomID, dataType, err := s.accountDataTarget(r)
	if err != nil {
		return err
	}
	content, err := s.loadAccountData(r.Context(), local, roomID, dataType)
	if err != nil {
		return err
	}
	if content == nil || isDeletedAccountData(content) {
		if roomID != "" {
			return mxerr.New(mxerr.NotFound, "room account data not found")
		}
		return mxerr.New(mxerr.NotFound, "account data not found")
	}
	return httpx.OK(w, content)
}

// putAccountData sets one global or per-room account data type.
// Spec: client-server-api, "PUT /_matrix/client/v3/user/{userId}/account_data/{type}"
// and "PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}".
func (s *Server) putAccountData(w http.ResponseWriter, r *http.Request) error {
	local, roomID, dataType, err := s.accountDataTarget(r)
	if err != nil {
		return err
	}
	if serverManagedAccountData[dataType] {
		// Spec: "Servers MUST reject setting account data for event types
		// that the server manages by using a 405 error response", errcode
		// M_BAD_JSON.
		return mxerr.New(mxerr.BadJSON, "cannot set %s through this API", dataType).WithStatus(http.StatusMethodNotAllowed)
	}
	body, err := httpx.ReadBody(r)
	if err != nil {
		return err
	}
	content, err := accountDataContent(body)
	if err != nil {
		return err
	}
	if _, err := s.storeAccountData(r.Context(), local, roomID, dataType, content); err != nil {
		return err
	}
	return httpx.OK(w, httpx.EmptyObject)
}

// deleteAccountData deletes one global or per-room account data type.
// MSC3391: the entry is replaced by an empty object, which incremental
// syncs report as the deletion and which GET and initial syncs treat as
// absent. Deleting an unset type succeeds and changes nothing.
func (s *Server) deleteAccountData(w http.ResponseWriter, r *http.Request) error {
	local, roomID, dataType, err := s.accountDataTarget(r)
	if err != nil {
		return err
	}
	if serverManagedAccountData[dataType] {
		return mxerr.New(mxerr.BadJSON, "cannot delete %s through this API", dataType).WithStatus(http.StatusMethodNotAllowed)
	}
	if err := s.db.Write(r.Context(), func(tx storage.Tx) error {
		return s.deleteAccountDataTx(r.Context(), tx, local, roomID, dataType)
	}); err != nil {
		return err
	}
	return httpx.OK(w, httpx.EmptyObject)
}

// accountDataTarget checks the caller and the path of an account data
// request and returns the caller's localpart, the room ID ("" for global
// account data) and the type.
func (s *Server) accountDataTarget(r *http.Request) (local, roomID, dataType string, err error) {
	if local, roomID, err = s.accountDataOwner(r, "account data"); err != nil {
		return "", "", "", err
	}
	if dataType, err = unescapedParam(r, "type"); err != nil {
		return "", "", "", err
	}
	if dataType == "" || len(dataType) > maxAccountDataTypeLength || !utf8.ValidString(dataType) {
		return "", "", "", mxerr.New(mxerr.InvalidParam, "account data type must be 1 to %d bytes of UTF-8", maxAccountDataTypeLength)
	}
	return local, roomID, dataType, nil
}

// accountDataOwner checks the caller and the user and room of a path
// under /user/{userId}[/rooms/{roomId}] (account data, tags) and returns
// the caller's localpart and the room ID ("" without {roomId}). what
// names the data in errors. Guests are refused: neither account data nor
// tags are among the endpoints open to them.
// Spec: client-server-api, "Guest Access", "Client behaviour".
func (s *Server) accountDataOwner(r *http.Request, what string) (local, roomID string, err error) {
	if caller := authn.FromContext(r.Context()); caller != nil && caller.IsGuest {
		return "", "", mxerr.New(mxerr.GuestAccessForbidden, "guests cannot use %s", what)
	}
	local, err = s.ownLocalpart(r, "access "+what)
	if err != nil {
		return "", "", err
	}
	if chi.URLParam(r, "roomId") != "" {
		if roomID, err = unescapedParam(r, "roomId"); err != nil {
			return "", "", err
		}
		if !validRoomID(roomID) {
			return "", "", mxerr.New(mxerr.InvalidParam, "%q is not a valid room ID", roomID)
		}
	}
	return local, roomID, nil
}

// accountDataContent checks that body is a JSON object and returns it
// compacted. Spec: 400 with M_NOT_JSON or M_BAD_JSON otherwise.
func accountDataContent(body []byte) (json.RawMessage, error) {
	// Compact validates as it goes (one pass over the body, not a
	// json.Valid pass before it): not JSON is M_NOT_JSON, JSON that is
	// not an object M_BAD_JSON.
	var compact bytes.Buffer
	compact.Grow(len(body))
	if err := json.Compact(&compact, body); err != nil || compact.Len() == 0 {
		return nil, mxerr.New(mxerr.NotJSON, "content must be a JSON object")
	}
	if compact.Bytes()[0] != '{' {
		return nil, mxerr.New(mxerr.BadJSON, "content must be a JSON object")
	}
	return compact.Bytes(), nil
}

// validRoomID reports whether id has a room ID's shape: '!', an opaque
// part (with or without ":domain", depending on the room version), at
// most 255 bytes, valid UTF-8 without NUL.
// Spec: appendices, "Room IDs".
func validRoomID(id string) bool {
	if len(id) < 2 || len(id) > 255 || id[0] != '!' || !utf8.ValidString(id) || strings.ContainsRune(id, 0) {
		return false
	}
	if opaque, domain, ok := strings.Cut(id[1:], ":"); ok && (opaque == "" || domain == "") {
		return false
	}
	return true
}
