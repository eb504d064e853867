package clientapi

import (
	"context"

	"github.com/myelin-chat/myelin/storage"
)

// localNotificationSettingsPrefix begins the global account data type
// that holds one device's local notification settings; the device ID
// follows it. MSC3890: when the device is deleted, so is this entry.
const localNotificationSettingsPrefix = "org.matrix.msc3890.local_notification_settings."

// deleteDeviceAccountData deletes each deleted device's local
// notification settings inside tx (MSC3890, with MSC3391 deletion, so
// other devices' syncs see it go). deleteDevices runs it before
// onDevicesDeleted, in the server and in the admin commands alike.
func (a *Accounts) deleteDeviceAccountData(ctx context.Context, tx storage.Tx, localpart string, deviceIDs []string) error {
	for _, id := range deviceIDs {
		if err := deleteAccountData(ctx, a.db, tx, a.notify, localpart, "", localNotificationSettingsPrefix+id); err != nil {
			return err
		}
	}
	return nil
}
