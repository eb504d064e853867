package clientapi

import (
	"net/http"

	"github.com/myelin-chat/myelin/internal/authn"
)

// guestEndpoints are the client API's endpoints a guest may call, by
// method and route pattern as registered. authn.Middleware, which guards
// every clientapi endpoint that needs an access token, answers a guest
// 403 M_GUEST_ACCESS_FORBIDDEN on every other one before its handler
// runs, so nothing is written; syncapi, keyserver, mediaapi and
// pushserver hand it their own lists (internal/authn, Guests). Handlers
// may refuse guests further (profile fields other than displayname,
// TURN unless allowed, joins of rooms not open to guests). Endpoints
// that also serve callers without a token (authn.Optional: profile
// lookups, room summaries) serve guests too.
//
// Spec: client-server-api, "Guest Access", "Client behaviour", whose
// lists are followed here for the client API's own endpoints. Three
// additions, all as Synapse serves guests: POST /join/{roomIdOrAlias},
// the other form of the listed join, with the same guest_access check;
// GET /capabilities, a read clients make at start that tells a guest
// what it may not do; GET /voip/turnServer, which refuses guests itself
// unless client_api.turn.allow_guests. Filters (POST and GET
// /user/{userId}/filter) are refused, as Synapse does: a guest passes
// its filter inline to /sync.
var guestEndpoints authn.Guests

func init() {
	const v3, room = "/_matrix/client/v3", "/_matrix/client/v3/rooms/{roomId}"
	allow := guestEndpoints.Allow
	state := []string{room + "/state/{eventType}", room + "/state/{eventType}/", room + "/state/{eventType}/{stateKey}"}
	// Retrieving events.
	allow(http.MethodGet, room+"/state", room+"/context/{eventId}", room+"/event/{eventId}", room+"/messages", room+"/members")
	// Room previews (rooms_peek.go).
	allow(http.MethodGet, room+"/initialSync", v3+"/events")
	allow(http.MethodGet, state...)
	// Sending events.
	allow(http.MethodPost, room+"/join", room+"/leave", v3+"/join/{roomIdOrAlias}")
	allow(http.MethodPut, room+"/send/{eventType}/{txnId}")
	allow(http.MethodPut, state...)
	// Account maintenance (the profile handlers allow only displayname).
	allow(http.MethodPut, v3+"/profile/{userId}/{keyName}")
	allow(http.MethodDelete, v3+"/profile/{userId}/{keyName}")
	allow(http.MethodGet, v3+"/devices", v3+"/devices/{deviceId}", v3+"/account/whoami")
	allow(http.MethodPut, v3+"/devices/{deviceId}")
	// Additions (see above).
	allow(http.MethodGet, v3+"/capabilities", v3+"/voip/turnServer")
}
