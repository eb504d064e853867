-- Events of this server that a resident server took from us through
-- send_join or send_knock (a local user's join or knock while the room
-- has partial state here): that server sends them to the rest of the
-- room, so the federation sender must not (LocalEventsAfter).
-- Spec: server-server-api, "Joining Rooms".
CREATE TABLE roomserver_delivered_events (
    event_nid BIGINT PRIMARY KEY
);
