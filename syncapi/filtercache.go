package syncapi

import (
	"context"
	"sync"

	"github.com/myelin-chat/myelin/clientapi"
)

// filterCache remembers stored filters by user and filter ID, so that a
// client long-polling with a filter ID (as Element does) does not load
// and parse it on every request. A stored filter never changes — POST
// /user/{userId}/filter gives a different filter a different ID, and
// none is ever edited or deleted — so an entry is never stale. Failed
// loads are not remembered. The *Filter values are shared between
// requests and must not be modified. Bounded: emptied when full.
// Spec: client-server-api, "POST /_matrix/client/v3/user/{userId}/filter".
type filterCache struct {
	mu      sync.Mutex
	max     int
	byKey   map[filterKey]*clientapi.Filter // guarded by mu
	filters Filters
}

func newFilterCache(filters Filters, max int) *filterCache {
	return &filterCache{filters: filters, max: max, byKey: map[filterKey]*clientapi.Filter{}}
}

// filterKey names a stored filter: a struct rather than the two IDs
// joined, which would allocate a string per request.
type filterKey struct{ userID, filterID string }

// Filter returns userID's stored filter filterID.
func (c *filterCache) Filter(ctx context.Context, userID, filterID string) (*clientapi.Filter, error) {
	key := filterKey{userID, filterID}
	c.mu.Lock()
	f, ok := c.byKey[key]
	c.mu.Unlock()
	if ok {
		return f, nil
	}
	f, err := c.filters.Filter(ctx, userID, filterID)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.byKey) >= c.max {
		c.byKey = map[filterKey]*clientapi.Filter{}
	}
	c.byKey[key] = f
	return f, nil
}

// Bounds of the inline filter cache: a client can send any number of
// distinct filters, so entries and their size are limited.
const (
	maxInlineFilters     = 1000
	maxInlineFilterBytes = 4096
)

// inlineFilters remembers parsed inline filters (the filter parameter
// given as JSON) by their exact text, so a client long-polling with the
// same inline filter does not parse it on every request. Parsing is a
// function of the text alone, so an entry is never stale. Parse errors
// are not remembered. The *Filter values are shared and must not be
// modified. Bounded: emptied when full.
type inlineFilters struct {
	mu     sync.Mutex
	byText map[string]*clientapi.Filter // guarded by mu
}

// parse returns clientapi.ParseFilter(text), from the cache when it can.
func (c *inlineFilters) parse(text string) (*clientapi.Filter, error) {
	if len(text) > maxInlineFilterBytes {
		return clientapi.ParseFilter([]byte(text))
	}
	c.mu.Lock()
	f, ok := c.byText[text]
	c.mu.Unlock()
	if ok {
		return f, nil
	}
	f, err := clientapi.ParseFilter([]byte(text))
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byText == nil || len(c.byText) >= maxInlineFilters {
		c.byText = map[string]*clientapi.Filter{}
	}
	c.byText[text] = f
	return f, nil
}
