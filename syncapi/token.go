package syncapi

import (
	"strconv"
	"strings"

	"github.com/myelin-chat/myelin/internal/mxerr"
)

// syncToken is the vector of stream positions a /sync response covers.
// Its text form is "s" then the positions in field order joined by "_";
// clients treat it as opaque. New streams append fields; a token with
// fewer fields than the current form is from an older release and its
// missing fields read as 0, so issued tokens stay valid.
type syncToken struct {
	Room        int64 // roomserver.Stream: events, state, invites, memberships
	AccountData int64 // clientapi.AccountDataStream
	Receipts    int64 // ReceiptStream
	Typing      int64 // TypingStream
	Presence    int64 // PresenceStream
	ToDevice    int64 // ToDeviceStream
	DeviceLists int64 // DeviceListStream
	// RemoteInvites is federationapi.RemoteInviteStream.
	RemoteInvites int64
	// Unread is the room stream position up to which the response's
	// unread counts are complete (never past Room). A long poll is
	// answered with the counts committed so far, which may trail its
	// timeline; the next sync refreshes the counts of the rooms with
	// events in (Unread, new Unread] (fillUnread). 0 in a token from an
	// older release: its next sync refreshes every room's counts.
	Unread int64
}

// tokenFields is the number of positions in the current form.
const tokenFields = 9

func (t *syncToken) fields() []*int64 {
	return []*int64{&t.Room, &t.AccountData, &t.Receipts, &t.Typing, &t.Presence, &t.ToDevice, &t.DeviceLists, &t.RemoteInvites, &t.Unread}
}

// max returns the larger position of t and o in every field.
func (t syncToken) max(o syncToken) syncToken {
	theirs := o.fields()
	for i, f := range t.fields() {
		*f = max(*f, *theirs[i])
	}
	return t
}

func (t syncToken) String() string {
	// Appended into one stack buffer: every response formats its token,
	// and strconv.FormatInt would allocate a string per position.
	var buf [8 + tokenFields*20]byte // "s", nine int64s and their separators
	b := append(buf[:0], 's')
	for i, f := range t.fields() {
		if i > 0 {
			b = append(b, '_')
		}
		b = strconv.AppendInt(b, *f, 10)
	}
	return string(b)
}

// parseSyncToken reads a token; anything this server could not have
// issued is M_INVALID_PARAM. A position is as String writes it: decimal
// digits, with no sign and no leading zero but in "0".
func parseSyncToken(s string) (syncToken, error) {
	var t syncToken
	bad := func() (syncToken, error) {
		return syncToken{}, mxerr.New(mxerr.InvalidParam, "invalid sync token")
	}
	rest, ok := strings.CutPrefix(s, "s")
	if !ok || len(s) > 200 {
		return bad()
	}
	fields := t.fields()
	n := 0
	for more := true; more; n++ {
		var p string
		p, rest, more = strings.Cut(rest, "_")
		if n == len(fields) || !canonicalPosition(p) {
			return bad()
		}
		v, err := strconv.ParseInt(p, 10, 64)
		if err != nil {
			return bad() // out of range
		}
		*fields[n] = v
	}
	if n < 2 {
		return bad()
	}
	return t, nil
}

// canonicalPosition reports whether p is a position as
// strconv.FormatInt writes a non-negative one.
func canonicalPosition(p string) bool {
	if p == "" || (p[0] == '0' && len(p) > 1) {
		return false
	}
	for i := 0; i < len(p); i++ {
		if p[i] < '0' || p[i] > '9' {
			return false
		}
	}
	return true
}

// checkNotFuture refuses a token past the heads: the server never issued
// it (or its database was replaced).
//
// Unread is left out: it is the push consumer's progress as this process
// last saw it, which another sync process may have seen further; a token
// ahead of it only refreshes no counts.
func (t syncToken) checkNotFuture(heads syncToken) error {
	t.Unread, heads.Unread = 0, 0
	mine, theirs := t.fields(), heads.fields()
	for i := range mine {
		if *mine[i] > *theirs[i] {
			return mxerr.New(mxerr.InvalidParam, "sync token is from the future")
		}
	}
	return nil
}
