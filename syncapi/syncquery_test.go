package syncapi

import (
	"encoding/json"
	"net/url"
	"strings"
	"testing"

	"github.com/myelin-chat/myelin/clientapi"
)

func jsonOf(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// fanoutQuery is the query of myelin-bench's fan-out listeners: an
// inline filter, a timeout and a token.
var fanoutQuery = "filter=" + url.QueryEscape(`{"presence":{"not_types":["*"]},"account_data":{"not_types":["*"]},`+
	`"room":{"rooms":["!abcdefghijklmnop:localhost"],"timeline":{"limit":100,"types":["m.room.message"]},`+
	`"state":{"lazy_load_members":true},"ephemeral":{"not_types":["*"]},"account_data":{"not_types":["*"]}}}`) +
	"&timeout=30000&since=" + url.QueryEscape("s123_4_5_6_7_8_9_10")

// handle parses rawQuery as the handler does, remembering an inline
// filter's parse by its escaped text, and returns the query and the
// filter the request would use.
func handle(t *testing.T, c *inlineFilters, rawQuery string) (syncQuery, any) {
	t.Helper()
	q := parseSyncQuery(rawQuery, c)
	if q.filter != nil {
		return q, q.filter
	}
	v := q.get(paramFilter)
	if !strings.HasPrefix(strings.TrimSpace(v), "{") {
		return q, v // a stored filter's ID, or none
	}
	f, err := c.parse(v)
	if err != nil {
		return q, err.Error()
	}
	c.rememberQuery(q.filterEscaped, f)
	return q, f
}

// TestSyncQueryMatchesURLValues: every parameter the handler reads is
// what r.URL.Query().Get gives — duplicates, bad escapes, ';', '+',
// escaped keys, empty pairs and long queries included — and so is the
// filter when it comes from the memo of escaped texts, on the second
// request with the same query.
func TestSyncQueryMatchesURLValues(t *testing.T) {
	long := strings.Repeat("x=1&", maxScannedQueryParams) + "since=long"
	queries := []string{
		"",
		"since=a&timeout=5",
		"since=&since=x",
		"since=%zz&since=ok",
		"%zz=1&since=k",
		"fil%74er=%7B%7D",
		"since=a+b%20c",
		"a;b=c&since=x",
		"since=x;y&since=z",
		"&&since=1&",
		"timeout=1=2",
		"set_presence=online&set_presence=offline",
		"since=%26&full_state=true&use_state_after=true&org.matrix.msc4222.use_state_after=false",
		"filter=%7B%22room%22%3A%7B%7D%7D&filter=7",
		"filter=%zz&filter=%7B%22room%22%3A%7B%22timeline%22%3A%7B%22limit%22%3A3%7D%7D%7D",
		"filter=12&since=y",
		"filter=%7B%22event_format%22%3A%22xml%22%7D",
		"filter=+%7B%7D",
		long,
		fanoutQuery,
	}
	for _, raw := range queries {
		want, _ := url.ParseQuery(raw)
		var c inlineFilters
		for round := range 2 {
			q, filter := handle(t, &c, raw)
			for i, name := range syncParamNames {
				if i == paramFilter {
					continue
				}
				if got := q.get(i); got != want.Get(name) {
					t.Errorf("%q round %d: %s = %q, url.Values says %q", raw, round, name, got, want.Get(name))
				}
			}
			// The filter: the same text, or the same parse of it.
			_, wantFilter := handle(t, &inlineFilters{}, "filter="+url.QueryEscape(want.Get("filter")))
			if s, ok := wantFilter.(string); ok {
				if filter != s {
					t.Errorf("%q round %d: filter %v, want %q", raw, round, filter, s)
				}
			} else if f, ok := filter.(*clientapi.Filter); !ok {
				t.Errorf("%q round %d: filter %v, want a parse", raw, round, filter)
			} else if got, want := jsonOf(t, f), jsonOf(t, wantFilter); got != want {
				t.Errorf("%q round %d: filter %s, want %s", raw, round, got, want)
			} else if round == 1 && q.filter != f {
				t.Errorf("%q: the second request did not take the filter from the memo", raw)
			}
		}
	}
}

// TestSyncQueryFilterMemoKeyedByEscapedText: an escaped text that equals
// another filter's unescaped text ("%21" is three characters in one
// and "!" in the other) gets its own filter, not that one's.
func TestSyncQueryFilterMemoKeyedByEscapedText(t *testing.T) {
	var c inlineFilters
	text := `{"room":{"timeline":{"types":["%21a"]}}}`
	// First the text as a client escapes it: the memo holds its parse
	// by the escaped text, byText by the text itself.
	_, first := handle(t, &c, "filter="+url.QueryEscape(text))
	_, again := handle(t, &c, "filter="+url.QueryEscape(text))
	if again != first {
		t.Fatalf("the same escaped filter was parsed again")
	}
	// Now the text itself as the escaped value: it unescapes to "!a:x".
	_, other := handle(t, &c, "filter="+text)
	if other == first {
		t.Fatalf("a different escaped text got the first filter")
	}
	if got := c.byQuery; len(got) != 2 {
		t.Fatalf("byQuery holds %d entries, want 2", len(got))
	}
	if types := first.(*clientapi.Filter).Room.Timeline.Types; len(types) != 1 || types[0] != "%21a" {
		t.Fatalf("first filter's types %v", types)
	}
	if types := other.(*clientapi.Filter).Room.Timeline.Types; len(types) != 1 || types[0] != "!a" {
		t.Fatalf("second filter's types %v, want [!a]", types)
	}
}

// TestSyncQueryAllocations: a long poll with the inline filter it sent
// before reads its query without allocating: the filter is neither
// unescaped nor parsed again (url.ParseQuery made a map, a slice per
// parameter and an unescaped copy of the filter on every request).
func TestSyncQueryAllocations(t *testing.T) {
	var c inlineFilters
	handle(t, &c, fanoutQuery) // the first request parses and remembers
	var q syncQuery
	allocs := testing.AllocsPerRun(100, func() { q = parseSyncQuery(fanoutQuery, &c) })
	if q.filter == nil || q.get(paramTimeout) != "30000" || q.get(paramSince) != "s123_4_5_6_7_8_9_10" {
		t.Fatalf("query read as %+v", q)
	}
	if allocs > 0 {
		t.Fatalf("parseSyncQuery allocated %.0f times, want 0", allocs)
	}
}

// BenchmarkSyncQuery: reading the fan-out listener's query, as the
// handler did (url.ParseQuery, then the inline filter from the memo by
// its unescaped text) and as it does (parseSyncQuery, the filter from
// the memo by its escaped text).
func BenchmarkSyncQuery(b *testing.B) {
	var c inlineFilters
	b.Run("url.ParseQuery", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			q, _ := url.ParseQuery(fanoutQuery)
			if _, err := c.parse(q.Get("filter")); err != nil || q.Get("since") == "" {
				b.Fatal(err)
			}
		}
	})
	b.Run("parseSyncQuery", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			q := parseSyncQuery(fanoutQuery, &c)
			if q.filter == nil {
				f, err := c.parse(q.get(paramFilter))
				if err != nil {
					b.Fatal(err)
				}
				c.rememberQuery(q.filterEscaped, f)
			}
		}
	})
}
