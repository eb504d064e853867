package clientapi

import (
	"net/http"

	"github.com/myelin-chat/myelin/internal/mxerr"
)

// guestEndpoints are the client API's endpoints a guest may call, by
// method and route pattern as registered with handle. Every other
// endpoint that takes an access token answers a guest 403
// M_GUEST_ACCESS_FORBIDDEN before its handler runs, so nothing is
// written. Handlers may refuse guests further (profile fields other than
// displayname, TURN unless allowed, joins of rooms not open to guests).
//
// Spec: client-server-api, "Guest Access", "Client behaviour", whose
// lists are followed here for the client API's own endpoints. The other
// components (syncapi, keyserver, mediaapi, pushserver) serve the
// listed /sync, /events, /sendToDevice, /keys/* and media endpoints, and
// do not yet refuse guests on their endpoints outside the lists
// (docs/features.md, "Guest access"). Three additions, all as Synapse serves guests: POST
// /join/{roomIdOrAlias}, the other form of the listed join, with the
// same guest_access check; GET /capabilities, a read clients make at
// start that tells a guest what it may not do; GET /voip/turnServer,
// which refuses guests itself unless client_api.turn.allow_guests.
var guestEndpoints = map[string]bool{}

func init() {
	const v3, room = "/_matrix/client/v3", "/_matrix/client/v3/rooms/{roomId}"
	allow := func(method string, patterns ...string) {
		for _, p := range patterns {
			guestEndpoints[method+" "+p] = true
		}
	}
	state := []string{room + "/state/{eventType}", room + "/state/{eventType}/", room + "/state/{eventType}/{stateKey}"}
	// Retrieving events.
	allow(http.MethodGet, room+"/state", room+"/context/{eventId}", room+"/event/{eventId}", room+"/messages", room+"/members")
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

// guestAllowed reports whether a guest may call the endpoint registered
// as method and pattern.
func guestAllowed(method, pattern string) bool { return guestEndpoints[method+" "+pattern] }

// errGuestEndpoint is the answer to a guest calling another endpoint.
func errGuestEndpoint() error {
	return mxerr.New(mxerr.GuestAccessForbidden, "guests may not use this endpoint")
}
