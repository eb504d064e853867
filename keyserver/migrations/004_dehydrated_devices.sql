-- Each user's dehydrated device (MSC3814): a device with keys and a
-- to-device inbox but no access token, whose private keys the client
-- stored, encrypted, in device_data. At most one per user; the device
-- itself is a row of clientapi's devices table, and its keys live in the
-- key tables like any device's.
CREATE TABLE keyserver_dehydrated_devices (
    user_id     TEXT PRIMARY KEY,
    device_id   TEXT NOT NULL,
    device_data TEXT NOT NULL,
    created_ts  BIGINT NOT NULL
);
