// Package mxerr is Myelin's error vocabulary: an error carries a Matrix
// error code (its kind), and one function, Status, maps the code to the
// HTTP status the spec gives it.
//
// Handlers return errors; internal/httpx turns them into the
// {"errcode": ..., "error": ...} body. Errors that are not *Error are
// internal faults: they are logged once and answered with 500 M_UNKNOWN,
// never with their text.
//
// Spec: client-server-api, "Standard error response" and "Common error codes".
package mxerr

import (
	"errors"
	"fmt"
	"net/http"
)

// Code is a Matrix error code such as M_FORBIDDEN.
type Code string

// The error codes Myelin uses. Spec: client-server-api, "Common error codes"
// and "Other error codes".
const (
	Forbidden               Code = "M_FORBIDDEN"
	UnknownToken            Code = "M_UNKNOWN_TOKEN"
	MissingToken            Code = "M_MISSING_TOKEN"
	UserLocked              Code = "M_USER_LOCKED"
	UserSuspended           Code = "M_USER_SUSPENDED"
	BadJSON                 Code = "M_BAD_JSON"
	NotJSON                 Code = "M_NOT_JSON"
	NotFound                Code = "M_NOT_FOUND"
	LimitExceeded           Code = "M_LIMIT_EXCEEDED"
	Unrecognized            Code = "M_UNRECOGNIZED"
	Unknown                 Code = "M_UNKNOWN"
	Unauthorized            Code = "M_UNAUTHORIZED"
	UserDeactivated         Code = "M_USER_DEACTIVATED"
	UserInUse               Code = "M_USER_IN_USE"
	InvalidUsername         Code = "M_INVALID_USERNAME"
	RoomInUse               Code = "M_ROOM_IN_USE"
	InvalidRoomState        Code = "M_INVALID_ROOM_STATE"
	ThreepidInUse           Code = "M_THREEPID_IN_USE"
	ThreepidNotFound        Code = "M_THREEPID_NOT_FOUND"
	ThreepidAuthFailed      Code = "M_THREEPID_AUTH_FAILED"
	ThreepidDenied          Code = "M_THREEPID_DENIED"
	ServerNotTrusted        Code = "M_SERVER_NOT_TRUSTED"
	UnsupportedRoomVersion  Code = "M_UNSUPPORTED_ROOM_VERSION"
	IncompatibleRoomVersion Code = "M_INCOMPATIBLE_ROOM_VERSION"
	BadState                Code = "M_BAD_STATE"
	GuestAccessForbidden    Code = "M_GUEST_ACCESS_FORBIDDEN"
	CaptchaNeeded           Code = "M_CAPTCHA_NEEDED"
	CaptchaInvalid          Code = "M_CAPTCHA_INVALID"
	MissingParam            Code = "M_MISSING_PARAM"
	InvalidParam            Code = "M_INVALID_PARAM"
	TooLarge                Code = "M_TOO_LARGE"
	Exclusive               Code = "M_EXCLUSIVE"
	ResourceLimitExceeded   Code = "M_RESOURCE_LIMIT_EXCEEDED"
	CannotLeaveServerNotice Code = "M_CANNOT_LEAVE_SERVER_NOTICE_ROOM"
	WeakPassword            Code = "M_WEAK_PASSWORD"
	UnableToAuthoriseJoin   Code = "M_UNABLE_TO_AUTHORISE_JOIN"
	UnableToGrantJoin       Code = "M_UNABLE_TO_GRANT_JOIN"
	WrongRoomKeysVersion    Code = "M_WRONG_ROOM_KEYS_VERSION"
	NotYetUploaded          Code = "M_NOT_YET_UPLOADED"
	CannotOverwriteMedia    Code = "M_CANNOT_OVERWRITE_MEDIA"
	InvalidSignature        Code = "M_INVALID_SIGNATURE"
	DuplicateAnnotation     Code = "M_DUPLICATE_ANNOTATION"
)

// Error is a Matrix error: a code, a human-readable message, and optionally
// the HTTP status (when it differs from the code's usual one), extra body
// fields and the underlying cause (never sent to the client).
type Error struct {
	Code    Code
	Message string
	// HTTPStatus overrides Status(Code) when non-zero.
	HTTPStatus int
	// Fields are merged into the JSON body (e.g. retry_after_ms, soft_logout).
	Fields map[string]any
	// Err is the cause, for logs only.
	Err error
}

// New returns an *Error with a formatted message.
func New(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// WithStatus returns e with its HTTP status set.
func (e *Error) WithStatus(status int) *Error { e.HTTPStatus = status; return e }

// With returns e with one extra body field set.
func (e *Error) With(key string, value any) *Error {
	if e.Fields == nil {
		e.Fields = map[string]any{}
	}
	e.Fields[key] = value
	return e
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.Err)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

func (e *Error) Unwrap() error { return e.Err }

// Status is the HTTP status for the error.
func (e *Error) Status() int {
	if e.HTTPStatus != 0 {
		return e.HTTPStatus
	}
	return Status(e.Code)
}

// Body is the JSON body for the error.
func (e *Error) Body() map[string]any {
	body := map[string]any{"errcode": string(e.Code), "error": e.Message}
	for k, v := range e.Fields {
		body[k] = v
	}
	return body
}

// Status maps an error code to the HTTP status the spec pairs it with.
func Status(code Code) int {
	switch code {
	case Forbidden, UserDeactivated, GuestAccessForbidden, ThreepidDenied,
		ResourceLimitExceeded, CannotLeaveServerNotice, UnableToGrantJoin:
		return http.StatusForbidden
	case UnknownToken, MissingToken, UserLocked, Unauthorized:
		return http.StatusUnauthorized
	case NotFound, ThreepidNotFound, Unrecognized:
		return http.StatusNotFound
	case LimitExceeded:
		return http.StatusTooManyRequests
	case TooLarge:
		return http.StatusRequestEntityTooLarge
	case Unknown:
		return http.StatusInternalServerError
	case UnableToAuthoriseJoin:
		return http.StatusBadGateway
	case CannotOverwriteMedia, RoomInUse:
		return http.StatusBadRequest
	case NotYetUploaded:
		return http.StatusGatewayTimeout
	case UserSuspended:
		return http.StatusForbidden
	default:
		return http.StatusBadRequest
	}
}

// As returns the *Error in err's chain, if any.
func As(err error) (*Error, bool) {
	var e *Error
	if errors.As(err, &e) {
		return e, true
	}
	return nil, false
}

// Is reports whether err carries the given Matrix code.
func Is(err error, code Code) bool {
	e, ok := As(err)
	return ok && e.Code == code
}

// Wrap returns an *Error with code and message that keeps err as its cause.
func Wrap(err error, code Code, format string, args ...any) *Error {
	e := New(code, format, args...)
	e.Err = err
	return e
}
