package syncapi

import (
	"context"

	"github.com/tidwall/gjson"
)

// addJoinedPresence adds the current presence of joined (users who
// started sharing a room with userID) to resp, leaving out userID and
// anyone whose presence resp already carries.
func (s *Server) addJoinedPresence(ctx context.Context, userID string, joined []string, to int64, resp *syncResponse) error {
	have := map[string]bool{userID: true}
	for _, ev := range resp.Presence.Events {
		have[gjson.GetBytes(ev, "sender").Str] = true
	}
	var want []string
	for _, u := range joined {
		if !have[u] {
			have[u] = true
			want = append(want, u)
		}
	}
	if len(want) == 0 {
		return nil
	}
	pres, err := s.eph.PresenceOf(ctx, want, to)
	if err != nil {
		return err
	}
	resp.Presence.Events = append(resp.Presence.Events, pres...)
	return nil
}
