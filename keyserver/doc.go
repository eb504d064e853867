// Package keyserver is Myelin's end-to-end encryption support: device
// keys, one-time and fallback keys, cross-signing keys and signatures,
// server-side key backups, to-device messages and device-list change
// tracking. It serves /keys/*, /sendToDevice and /room_keys/*.
//
// The server never sees a private key or a plaintext message: it stores
// public keys, signatures it has verified, and ciphertext the clients
// produced (Olm to-device payloads, encrypted backup session data).
//
// Contract:
//   - Device keys are accepted only for the caller's own device and only
//     with a valid self-signature; a device's identity keys never change.
//   - A one-time key is handed out at most once: a claim deletes it in the
//     statement that picks it. The fallback key is handed out when none
//     is left, and marked used.
//   - Every signature stored has been verified against the signer's key.
//   - To-device messages and device-list changes are streams (see API):
//     rows at increasing positions, written in the same transaction as the
//     data they describe, with Deps.Notify told after commit. To-device
//     rows are deleted only when sync acknowledges them (AckToDevice).
//   - Users on other servers (remote.go, federation_keys.go): /keys/query
//     and /keys/claim ask their servers in parallel within the request's
//     timeout (default 10 s) and report a server that fails in failures;
//     a remote user sharing a room with a local user is tracked — their
//     keys cached from GET /user/devices and kept current by
//     m.device_list_update (applied when prev_id is the stream ID held,
//     else a resync) — and answered from the cache while it is fresh.
//     A background resync that fails or ends stale is tried again after
//     1 s, 2 s, 4 s … (30 s cap, 8 attempts), one loop per user, ended
//     with the context given to StartFederation (startTracking).
//     Local users' changes go out as m.device_list_update (stream_id, the
//     change's position; prev_id, the user's previous one; deleted) and
//     m.signing_key_update to the servers sharing a room with them.
//     To-device messages for them wait in keyserver_to_device_outbound
//     for the federation sender. Signatures by local users of remote
//     users' keys are not supported yet (refused per key).
//
// Sync's part (API, adapted to syncapi.E2EE in internal/homeserver): per
// /sync of (user, device) with token positions toDevice and deviceList:
//   - AckToDevice(user, device, toDevice) when the client presents a
//     token, then ToDeviceSince(user, device, toDevice) → to_device.events
//     and the next token's to-device position (ToDevicePosition is the
//     head: rows are deleted, so it is kept in keyserver_stream_heads);
//   - DeviceListChanges(user, deviceList, DeviceListPosition(), delta) →
//     device_lists (incremental syncs only), delta from the room stream
//     (syncapi.MembershipChanges);
//   - KeyCounts (KeyCountsOfDevices for the long polls woken together) →
//     device_one_time_keys_count and device_unused_fallback_key_types,
//     from the CountMemo when the process has one (countmemo.go: every
//     key write of this process drops the device's entry on commit; none
//     in split mode);
//   - wake on Deps.Notify(ToDeviceStream | DeviceListStream, pos).
//
// The application service senders (MSC3202, appservice_streams.go) read
// the device-list stream (DeviceListChangesAfter) and the key-count change
// stream (KeyCountChangesAfter): the devices of users a service that opted
// in owns (Deps.WatchKeyCounts) whose one-time or fallback keys were
// uploaded or claimed, one row per device at its latest change, its
// position raised under the 'key_counts' row of keyserver_stream_heads.
//
// GET /keys/changes takes sync tokens (syncapi.DecodeToken) and answers
// like /sync's device_lists for the window between them.
//
// Concurrency: a Server is safe for concurrent use; all state is in the
// database, apart from the CountMemo's copies of it. Stream positions commit in order (an advisory lock per stream
// on PostgreSQL, the single writer on SQLite).
//
// Spec: client-server-api, "End-to-End Encryption" and "Send-to-Device
// messaging"; dehydrated devices per MSC3814 (dehydrated.go).
package keyserver
