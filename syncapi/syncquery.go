package syncapi

import (
	"net/url"
	"strings"

	"github.com/myelin-chat/myelin/clientapi"
)

// The parameters of GET /sync the handler reads, as indexes into
// syncQuery.values. Spec: client-server-api, "GET /_matrix/client/v3/sync".
const (
	paramSince = iota
	paramTimeout
	paramFullState
	paramSetPresence
	paramUseStateAfter
	paramUseStateAfterMSC
	paramFilter
	numSyncParams
)

var syncParamNames = [numSyncParams]string{
	paramSince:            "since",
	paramTimeout:          "timeout",
	paramFullState:        "full_state",
	paramSetPresence:      "set_presence",
	paramUseStateAfter:    "use_state_after",
	paramUseStateAfterMSC: "org.matrix.msc4222.use_state_after",
	paramFilter:           "filter",
}

// maxScannedQueryParams bounds the queries syncQuery scans itself: a
// longer one goes through url.ParseQuery (whose own bound on the number
// of parameters then applies as it always did).
const maxScannedQueryParams = 32

// syncQuery is what url.Values.Get gives for each parameter the handler
// reads (the first value that unescapes, "" when there is none), found
// without unescaping the whole query into a map. A long-polling client
// sends its inline filter (often hundreds of bytes escaped) on every
// request: when that escaped text was parsed before, the filter comes
// from inlineFilters by the escaped text, and is never unescaped again.
type syncQuery struct {
	values [numSyncParams]string
	// filter is the inline filter that the filter parameter's escaped
	// text was parsed to before; values[paramFilter] is then "".
	filter *clientapi.Filter
	// filterEscaped is the filter parameter as the URL carries it, when
	// values[paramFilter] was unescaped from it ("" otherwise): the key
	// under which its parse is remembered.
	filterEscaped string
}

func (q *syncQuery) get(param int) string { return q.values[param] }

// parseSyncQuery reads rawQuery (the URL's RawQuery) as r.URL.Query()
// followed by Get would for each parameter: pairs split at '&', a pair
// with ';' or a key or value that does not unescape skipped, empty
// pairs skipped, '+' a space, the first value kept.
func parseSyncQuery(rawQuery string, inline *inlineFilters) syncQuery {
	var q syncQuery
	if strings.Count(rawQuery, "&") >= maxScannedQueryParams || strings.Contains(rawQuery, ";") {
		// Rare queries take the standard library's path. A ';' makes
		// ParseQuery skip its pair; many parameters meet its bound.
		vals, _ := url.ParseQuery(rawQuery)
		for i, name := range syncParamNames {
			q.values[i] = vals.Get(name)
		}
		return q
	}
	var found [numSyncParams]bool
	for rest := rawQuery; rest != ""; {
		var pair string
		pair, rest, _ = strings.Cut(rest, "&")
		if pair == "" {
			continue
		}
		escKey, escValue, _ := strings.Cut(pair, "=")
		key, err := url.QueryUnescape(escKey) // no copy without '%' or '+'
		if err != nil {
			continue
		}
		param := syncParam(key)
		if param < 0 || found[param] {
			continue
		}
		if param == paramFilter {
			// A text in the memo unescaped before, so it is this
			// parameter's first value.
			if f, ok := inline.fromQuery(escValue); ok {
				q.filter, found[param] = f, true
				continue
			}
		}
		value, err := url.QueryUnescape(escValue)
		if err != nil {
			continue
		}
		q.values[param], found[param] = value, true
		if param == paramFilter {
			q.filterEscaped = escValue
		}
	}
	return q
}

// syncParam is key's index in syncParamNames, or -1.
func syncParam(key string) int {
	for i, name := range syncParamNames {
		if key == name {
			return i
		}
	}
	return -1
}
