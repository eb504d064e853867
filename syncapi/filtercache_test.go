package syncapi

import (
	"context"
	"strings"
	"testing"

	"github.com/myelin-chat/myelin/clientapi"
	"github.com/myelin-chat/myelin/internal/mxerr"
)

// countingFilters is a Filters that knows one filter per user and counts
// its loads.
type countingFilters struct{ loads int }

func (f *countingFilters) Filter(_ context.Context, userID, filterID string) (*clientapi.Filter, error) {
	f.loads++
	if filterID != "1" {
		return nil, mxerr.New(mxerr.NotFound, "unknown filter")
	}
	return &clientapi.Filter{EventFormat: userID}, nil
}

// TestFilterCache: a stored filter is loaded once per user and filter
// ID; another user's filter with the same ID is its own entry; an
// unknown filter is an error every time (failures are not remembered);
// a full cache starts over.
func TestFilterCache(t *testing.T) {
	ctx := context.Background()
	src := &countingFilters{}
	c := newFilterCache(src, 2)
	for range 3 {
		f, err := c.Filter(ctx, "@alice:x", "1")
		if err != nil || f.EventFormat != "@alice:x" {
			t.Fatalf("alice's filter: %v, %v", f, err)
		}
	}
	if src.loads != 1 {
		t.Fatalf("3 requests loaded the filter %d times, want 1", src.loads)
	}
	if f, err := c.Filter(ctx, "@bob:x", "1"); err != nil || f.EventFormat != "@bob:x" {
		t.Fatalf("bob's filter 1: %v, %v (alice's entry must not answer for bob)", f, err)
	}
	for range 2 {
		if _, err := c.Filter(ctx, "@alice:x", "2"); !mxerr.Is(err, mxerr.NotFound) {
			t.Fatalf("unknown filter: %v, want M_NOT_FOUND", err)
		}
	}
	if src.loads != 4 {
		t.Fatalf("loads = %d, want 4 (alice once, bob once, the unknown filter twice)", src.loads)
	}
	if _, err := c.Filter(ctx, "@carol:x", "1"); err != nil {
		t.Fatal(err)
	}
	if len(c.byKey) != 1 {
		t.Fatalf("a full cache kept %d entries, want only the new one", len(c.byKey))
	}
}

// TestInlineFilterCache: an inline filter is parsed once per exact text
// and the same parse answers every request with that text; a different
// text is its own entry; a bad filter is refused every time (failures
// are not remembered); an oversized text is parsed but not kept.
func TestInlineFilterCache(t *testing.T) {
	var c inlineFilters
	text := `{"room":{"timeline":{"limit":5}}}`
	first, err := c.parse(text)
	if err != nil || first.Room == nil || first.Room.Timeline == nil || *first.Room.Timeline.Limit != 5 {
		t.Fatalf("parse: %+v, %v", first, err)
	}
	again, err := c.parse(text)
	if err != nil || again != first {
		t.Fatalf("second parse of the same text = %p, %v; want the cached %p", again, err, first)
	}
	other, err := c.parse(`{"room":{"timeline":{"limit":6}}}`)
	if err != nil || *other.Room.Timeline.Limit != 6 {
		t.Fatalf("another text: %+v, %v", other, err)
	}
	for range 2 {
		if _, err := c.parse(`{"event_format":"xml"}`); !mxerr.Is(err, mxerr.BadJSON) {
			t.Fatalf("bad filter: %v, want M_BAD_JSON", err)
		}
	}
	if len(c.byText) != 2 {
		t.Fatalf("cache holds %d entries, want 2 (failures are not kept)", len(c.byText))
	}
	big := `{"room":{"timeline":{"types":["` + strings.Repeat("x", maxInlineFilterBytes) + `"]}}}`
	if f, err := c.parse(big); err != nil || len(f.Room.Timeline.Types) != 1 {
		t.Fatalf("oversized filter: %+v, %v", f, err)
	}
	if len(c.byText) != 2 {
		t.Fatalf("an oversized filter was kept (%d entries)", len(c.byText))
	}
}
