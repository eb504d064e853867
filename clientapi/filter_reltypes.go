package clientapi

import (
	"encoding/json"
	"slices"

	"github.com/tidwall/gjson"
)

// RelTypeAllows applies MSC3874's relation filters to an event's content:
// with rel_types set, only an event whose m.relates_to.rel_type is listed
// passes (an event without a relation has none, so it does not); an event
// whose rel_type is in not_rel_types never passes. A nil filter passes
// everything. The sync component uses it for timeline filters.
func (f *RoomEventFilter) RelTypeAllows(content json.RawMessage) bool {
	if f == nil || (f.RelTypes == nil && len(f.NotRelTypes) == 0) {
		return true
	}
	relType := gjson.GetBytes(content, `m\.relates_to.rel_type`)
	has := relType.Type == gjson.String
	if f.RelTypes != nil && (!has || !slices.Contains(f.RelTypes, relType.Str)) {
		return false
	}
	return !has || !slices.Contains(f.NotRelTypes, relType.Str)
}
