package storage

import (
	"strconv"
	"strings"
)

// MaxInList bounds the values of one InList, well under the bind
// parameter limits of both engines (SQLite 32766, PostgreSQL 65535).
const MaxInList = 1000

// InList returns prefix followed by "($1, $2, …)" for values, and the
// values as arguments: one SQL text for both engines. Callers keep
// len(values) ≤ MaxInList (split longer lists) and non-zero.
func InList[T any](prefix string, values []T) (string, []any) {
	var b strings.Builder
	b.Grow(len(prefix) + 2 + 5*len(values))
	b.WriteString(prefix)
	b.WriteByte('(')
	args := make([]any, len(values))
	for i, v := range values {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteByte('$')
		b.WriteString(strconv.Itoa(i + 1))
		args[i] = v
	}
	b.WriteByte(')')
	return b.String(), args
}
