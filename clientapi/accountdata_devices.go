package clientapi

import (
	"context"

	"github.com/myelin-chat/myelin/storage"
)

// localNotificationSettingsPrefix begins the global account data type
// that holds one device's local notification settings; the device ID
// follows it. MSC3890: when the device is deleted, so is this entry.
const localNotificationSettingsPrefix = "org.matrix.msc3890.local_notification_settings."

// deviceAccountDataHook returns the DevicesDeletedHook clientapi runs when
// devices are deleted: it deletes each device's local notification
// settings (MSC3890, with MSC3391 deletion, so other devices' syncs see
// it go), then runs next, if any.
func (s *Server) deviceAccountDataHook(next DevicesDeletedHook) DevicesDeletedHook {
	return func(ctx context.Context, tx storage.Tx, userID string, deviceIDs []string) error {
		if local := s.localpart(userID); local != "" {
			for _, id := range deviceIDs {
				if err := s.deleteAccountDataTx(ctx, tx, local, "", localNotificationSettingsPrefix+id); err != nil {
					return err
				}
			}
		}
		if next == nil {
			return nil
		}
		return next(ctx, tx, userID, deviceIDs)
	}
}
