-- Rooms an application service published in the room directory of one of
-- its third-party networks, apart from the homeserver's own list
-- (room_directory).
-- Spec: client-server-api, "PUT /_matrix/client/v3/directory/list/appservice/{networkId}/{roomId}",
-- listed by /publicRooms with third_party_instance_id or include_all_networks.
CREATE TABLE appservice_room_directory (
    appservice_id TEXT NOT NULL,
    network_id    TEXT NOT NULL,
    room_id       TEXT NOT NULL,
    published_ts  BIGINT NOT NULL,
    PRIMARY KEY (appservice_id, network_id, room_id)
);
