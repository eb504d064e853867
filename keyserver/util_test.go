package keyserver_test

import (
	"errors"
	"strconv"

	"github.com/myelin-chat/myelin/keyserver"
)

func keyserverDelta(joined, left []string) keyserver.MembershipDelta {
	return keyserver.MembershipDelta{Joined: joined, Left: left}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func errorsAs(err error, target any) bool { return errors.As(err, target) }

func toStrings(v any) []string {
	list, _ := v.([]any)
	out := []string{}
	for _, x := range list {
		s, _ := x.(string)
		out = append(out, s)
	}
	return out
}
