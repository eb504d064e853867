package federationapi

import (
	"context"
	"slices"
)

// dropMembers hands the key server the remote users that partialMembers
// (the room's joined members just before its resync completed) held as
// joined and the completed state does not: the partial state was wrong
// about them (an event the resync rejected had kept them in, or one it
// upheld had been rejected), so the device lists tracked on their
// behalf may be tracked no longer (DeviceListSink.MembersDropped).
// Spec: client-server-api, "Tracking the device list for a user"; MSC3706;
// Complement msc3902 "Device list tracking for user incorrectly believed
// to be in room when they rejoin after partial state join completes".
func (s *Server) dropMembers(ctx context.Context, roomID string, partialMembers []string) error {
	if s.edus.DeviceLists == nil {
		return nil
	}
	users, err := s.rooms.JoinedUsers(ctx, roomID)
	if err != nil {
		return err
	}
	var dropped []string
	for _, u := range partialMembers {
		if domainOf(u) != s.serverName && !slices.Contains(users, u) {
			dropped = append(dropped, u)
		}
	}
	if len(dropped) == 0 {
		return nil
	}
	return s.edus.DeviceLists.MembersDropped(ctx, dropped)
}
