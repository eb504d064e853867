package roomserver

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// Policy servers (spec v1.18): a room whose current state names a
// policy server in m.room.policy has every event but that state event
// signed by it. Spec: server-server-api, "Policy Servers".
//
//   - Local events (sendProto, BuildRemoteInvite) are sent to the policy
//     server once they pass the auth rules; its signature is checked
//     against the room's key and added to the event before it is stored.
//     A refusal, an error or a bad signature refuses the client's request
//     and nothing is stored or sent. A send asks without holding the
//     room lock and stores the signed event only if the room did not move
//     meanwhile (buildAndQueue).
//   - A policy server that could not be reached is not asked again for a
//     growing backoff (policy_backoff.go).
//   - Federation events (InputEvent, InputWithState) without a valid
//     policy signature are sent to the policy server once; still without
//     one they are soft-failed. The auth rules are not affected.
//
// Whether a room uses a policy server is read from the current state's
// (m.room.policy, "") entry through the snapshot key cache that building
// and checking an event already use, so a room without one pays a map
// lookup per event. Myelin does not act as a policy server itself.

// PolicySigner asks a policy server to sign an event.
type PolicySigner interface {
	// PolicySign sends event (federation JSON) to server's
	// POST /_matrix/policy/v1/sign and returns the signatures it
	// answered (server name -> key ID -> signature). An error answer is
	// a *PolicyRefusal; an unreachable server is any other error.
	PolicySign(ctx context.Context, server string, event json.RawMessage) (map[string]map[string]string, error)
}

// PolicyRefusal is a policy server's error answer to a sign request.
type PolicyRefusal struct {
	Server  string
	Status  int
	Code    string // the errcode, verbatim
	Message string // the error, verbatim
}

func (e *PolicyRefusal) Error() string {
	return fmt.Sprintf("policy server %s answered %d %s: %s", e.Server, e.Status, e.Code, e.Message)
}

// policySignErrcodes are the errcodes the spec lists for the answers of
// POST /_matrix/policy/v1/sign (400, 403, 404, 429).
// Spec: server-server-api, "POST /_matrix/policy/v1/sign".
var policySignErrcodes = map[mxerr.Code]bool{
	mxerr.BadJSON: true, mxerr.NotJSON: true, mxerr.Forbidden: true,
	mxerr.NotFound: true, mxerr.Unrecognized: true, mxerr.LimitExceeded: true,
}

// clientError is the refusal as the client's error: the policy server's
// errcode, status and message when the errcode is one the endpoint lists
// and the status a 4xx other than 401; otherwise 502 M_UNKNOWN with its
// message. Any other errcode could make the client act on it as if its
// homeserver had said it (M_UNKNOWN_TOKEN, M_USER_DEACTIVATED or
// M_USER_LOCKED log the client out: security case 32).
func (e *PolicyRefusal) clientError() *mxerr.Error {
	code := mxerr.Code(e.Code)
	if !policySignErrcodes[code] || e.Status < 400 || e.Status > 499 || e.Status == http.StatusUnauthorized {
		return (&mxerr.Error{Code: mxerr.Unknown, Message: e.Message, Err: e}).WithStatus(http.StatusBadGateway)
	}
	return (&mxerr.Error{Code: code, Message: e.Message, Err: e}).WithStatus(e.Status)
}

// SetPolicySigner sets the PolicySigner. Call it before serving.
func (s *Server) SetPolicySigner(p PolicySigner) { s.policySigner = p }

// policyKeyID is the key ID of every policy server signature.
// Spec: server-server-api, "Validating Policy Server signatures".
const policyKeyID = "ed25519:policy_server"

// policyTuple is the state key of a room's policy server configuration.
var policyTuple = tuple{"m.room.policy", ""}

// roomPolicy is a policy server a room uses.
type roomPolicy struct {
	via string
	// key is the ed25519 public key of m.room.policy; nil when the
	// content's key is not a decodable ed25519 key (the room still uses
	// the policy server, but no signature can be valid).
	key ed25519.PublicKey
}

// policyOf returns the policy server the room uses in its current state
// (room.CurrentSnapshot), or nil. Spec: server-server-api, "Determining
// if a Policy Server is enabled in a room": the state has an
// m.room.policy event with empty state key whose content has a string
// via and an object public_keys with a string ed25519, and via has a
// joined user in the room.
func (s *Server) policyOf(ctx context.Context, q storage.Querier, tx storage.Tx, room *roomRow) (*roomPolicy, error) {
	if room.CurrentSnapshot == 0 {
		return nil, nil
	}
	evs, err := s.stateEventsFor(ctx, q, tx, room, room.CurrentSnapshot, nil, []tuple{policyTuple})
	if err != nil || len(evs) == 0 {
		return nil, err
	}
	pol := parsePolicyContent(evs[0].Content())
	if pol == nil {
		return nil, nil
	}
	joined, err := s.serverJoined(ctx, q, room.RoomID, pol.via)
	if err == nil && !joined && room.Partial {
		// Partial state lacks most members: the servers send_join said
		// were in the room stand in for them until the resync.
		var servers []string
		servers, err = withPartialStateServers(ctx, q, room.RoomID, nil, map[string]bool{})
		joined = slices.Contains(servers, pol.via)
	}
	if err != nil || !joined {
		return nil, err
	}
	return pol, nil
}

// parsePolicyContent reads m.room.policy content, nil when it does not
// configure a policy server.
func parsePolicyContent(content []byte) *roomPolicy {
	via := gjson.GetBytes(content, "via")
	keys := gjson.GetBytes(content, "public_keys")
	key := keys.Get("ed25519")
	if via.Type != gjson.String || !keys.IsObject() || key.Type != gjson.String {
		return nil
	}
	pol := &roomPolicy{via: via.Str}
	if raw, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(key.Str, "=")); err == nil && len(raw) == ed25519.PublicKeySize {
		pol.key = ed25519.PublicKey(raw)
	}
	return pol
}

// serverJoined reports whether server has a joined user in roomID's
// current state: one probe of the index on the members' server names
// (migration 012), whatever the number of members. The expression is the
// index's, per engine; domainOf's split at the first colon is the same.
func (s *Server) serverJoined(ctx context.Context, q storage.Querier, roomID, server string) (bool, error) {
	if server == "" {
		return false, nil
	}
	query := serverJoinedSQLite
	if s.db.Engine() == storage.Postgres {
		query = serverJoinedPostgres
	}
	n, err := storage.QueryColumn[int64](ctx, q, query, roomID, server)
	return len(n) > 0, err
}

const (
	serverJoinedSQLite = `SELECT 1 FROM roomserver_current_state
		WHERE room_id = $1 AND type = 'm.room.member' AND membership = 'join'
			AND substr(state_key, instr(state_key, ':') + 1) = $2 AND instr(state_key, ':') > 0 LIMIT 1`
	serverJoinedPostgres = `SELECT 1 FROM roomserver_current_state
		WHERE room_id = $1 AND type = 'm.room.member' AND membership = 'join'
			AND substr(state_key, strpos(state_key, ':') + 1) = $2 AND strpos(state_key, ':') > 0 LIMIT 1`
)

// needsPolicySignature reports whether pdu is to be signed by the
// room's policy server: every event but m.room.policy with empty state
// key. Spec: server-server-api, POST /_matrix/policy/v1/sign.
func needsPolicySignature(pdu gomatrixserverlib.PDU) bool {
	return !isPolicyConfig(pdu)
}

// validSignature reports whether pdu carries a valid signature of the
// policy server (over the redacted event, as event signatures are).
func (pol *roomPolicy) validSignature(pdu gomatrixserverlib.PDU) bool {
	if pol.key == nil {
		return false
	}
	sig := gjson.GetBytes(pdu.JSON(), "signatures."+gjson.Escape(pol.via)+"."+gjson.Escape(policyKeyID))
	if sig.Type != gjson.String {
		return false
	}
	impl, err := roomVersion(string(pdu.Version()))
	if err != nil {
		return false
	}
	_, err = guard("policy signature", func() (struct{}, error) {
		redacted, err := impl.RedactEventJSON(pdu.JSON())
		if err != nil {
			return struct{}{}, err
		}
		return struct{}{}, gomatrixserverlib.VerifyJSON(pol.via, policyKeyID, pol.key, redacted)
	})
	return err == nil
}

// askPolicyServer sends pdu to the policy server and returns pdu with
// the signature it answered added (the event's other signatures kept).
// The signature is not checked here.
func (s *Server) askPolicyServer(ctx context.Context, pol *roomPolicy, pdu gomatrixserverlib.PDU) (gomatrixserverlib.PDU, error) {
	if s.policySigner == nil {
		return nil, fmt.Errorf("federation is disabled: cannot reach policy server %s", pol.via)
	}
	if pol.via == string(s.serverName) {
		return nil, fmt.Errorf("the room names this server as its policy server, and this server is not one")
	}
	if err := s.policyBackoff.check(pol.via, s.now()); err != nil {
		return nil, err
	}
	timeout := s.policyTimeout
	if timeout == 0 {
		timeout = policySignTimeout
	}
	reqCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	sigs, err := s.policySigner.PolicySign(reqCtx, pol.via, pdu.JSON())
	s.policyBackoff.record(pol.via, s.now(), err, ctx.Err() != nil)
	if err != nil {
		return nil, err
	}
	sig, ok := sigs[pol.via][policyKeyID]
	if !ok {
		return nil, fmt.Errorf("policy server %s answered no %s signature", pol.via, policyKeyID)
	}
	// Kept: the event's other signatures, which the policy server need
	// not return (POST /_matrix/policy/v1/sign).
	all := map[string]map[string]string{}
	if raw := gjson.GetBytes(pdu.JSON(), "signatures").Raw; raw != "" {
		if err := json.Unmarshal([]byte(raw), &all); err != nil {
			return nil, fmt.Errorf("event signatures: %w", err)
		}
	}
	if all[pol.via] == nil {
		all[pol.via] = map[string]string{}
	}
	all[pol.via][policyKeyID] = sig
	sigJSON, err := json.Marshal(all)
	if err != nil {
		return nil, err
	}
	signed, err := sjson.SetRawBytes(pdu.JSON(), "signatures", sigJSON)
	if err != nil {
		return nil, err
	}
	impl, err := roomVersion(string(pdu.Version()))
	if err != nil {
		return nil, err
	}
	return guard("adding policy signature", func() (gomatrixserverlib.PDU, error) {
		return impl.NewEventFromTrustedJSONWithEventID(pdu.EventID(), signed, false)
	})
}

// policySignTimeout bounds one request to a policy server.
const policySignTimeout = 10 * time.Second

// localPolicy returns the policy server that is to sign the local event
// p (which passed the auth rules), or nil when its room uses none or the
// event needs no signature.
func (s *Server) localPolicy(ctx context.Context, q storage.Querier, p *prepared) (*roomPolicy, error) {
	if !needsPolicySignature(p.pdu) {
		return nil, nil
	}
	return s.policyOf(ctx, q, nil, p.room)
}

// policySignLocal gets the room's policy server signature for a local
// event p that passed the auth rules (nothing when the room uses none)
// and puts the signed event in p, asking the policy server while the
// caller holds what it holds (see buildAndQueue for the send path, which
// asks without the room lock).
func (s *Server) policySignLocal(ctx context.Context, q storage.Querier, p *prepared) error {
	pol, err := s.localPolicy(ctx, q, p)
	if err != nil || pol == nil {
		return err
	}
	signed, err := s.policySignedLocal(ctx, pol, p.pdu)
	if err != nil {
		return err
	}
	p.setPDU(signed)
	return nil
}

// setPDU replaces p's event by the same event with other signatures.
func (p *prepared) setPDU(pdu gomatrixserverlib.PDU) {
	p.pdu = pdu
	p.row.JSON = string(pdu.JSON())
}

// policySignedLocal asks pol to sign the local event pdu and returns the
// event to store: pdu with the policy server's signature, or pdu itself
// for a user's own leave the policy server could not sign. Refused,
// unreachable (or in its failure backoff, policy_backoff.go) or
// answering a bad signature, the send fails: the policy server's error
// is the client's, verbatim; otherwise 502.
// Spec: server-server-api, "Validating Policy Server signatures" (reject
// the Client-Server API request, the policy server's error provided
// verbatim) and "Asking for a Policy Server signature on an event" (an
// error means the event is not sent). An unreachable policy server
// stops the room too: the spec's remedy is that m.room.policy itself
// can be changed without it (client-server-api, "Policy Servers",
// "Security considerations").
func (s *Server) policySignedLocal(ctx context.Context, pol *roomPolicy, pdu gomatrixserverlib.PDU) (gomatrixserverlib.PDU, error) {
	signed, err := s.askPolicyServer(ctx, pol, pdu)
	if err != nil {
		var refusal *PolicyRefusal
		isRefusal := errors.As(err, &refusal) && refusal.Status < 500
		if !isRefusal && isOwnLeave(pdu) {
			// A user can always leave: with the policy server down, the
			// leave goes out without its signature (other servers may
			// soft-fail it). Spec: server-server-api, "Policy Servers"
			// (the homeserver may send a local client's event anyway).
			slog.DebugContext(ctx, "policy server did not sign a leave; sending it unsigned", "event_id", pdu.EventID(), "err", err)
			return pdu, nil
		}
		if isRefusal {
			return nil, refusal.clientError()
		}
		return nil, (&mxerr.Error{Code: mxerr.Unknown, Message: fmt.Sprintf("the room's policy server %s could not be reached or failed", pol.via), Err: err}).
			WithStatus(http.StatusBadGateway)
	}
	if !pol.validSignature(signed) {
		return nil, mxerr.New(mxerr.Unknown, "the room's policy server %s answered a signature that does not verify with the room's key", pol.via).
			WithStatus(http.StatusBadGateway)
	}
	// The signature makes the event longer: it must still fit.
	if err := checkEventLimits(signed); err != nil {
		return nil, err
	}
	return signed, nil
}

// isOwnLeave reports whether pdu is a user's own leave of the room.
func isOwnLeave(pdu gomatrixserverlib.PDU) bool {
	return pdu.Type() == "m.room.member" && pdu.StateKeyEquals(string(pdu.SenderID())) &&
		gjson.GetBytes(pdu.Content(), "membership").Str == "leave"
}

// isPolicyConfig reports whether pdu is the m.room.policy state event
// with empty state key.
func isPolicyConfig(pdu gomatrixserverlib.PDU) bool {
	return pdu.Type() == "m.room.policy" && pdu.StateKeyEquals("")
}

// policyPresign returns pdu with its room's policy server signature,
// asking the policy server for one when the room uses one and pdu lacks a
// valid one; pdu itself when it needs none, has one, or the policy
// server does not sign it (policySoftFail then soft-fails it). For the
// rare paths that may read the room once more (InputWithState);
// InputEvent asks from inside its decision instead.
func (s *Server) policyPresign(ctx context.Context, roomID string, pdu gomatrixserverlib.PDU) (gomatrixserverlib.PDU, error) {
	if !needsPolicySignature(pdu) {
		return pdu, nil
	}
	reader := s.db.Reader()
	room, err := loadRoom(ctx, reader, roomID)
	if mxerr.Is(err, mxerr.NotFound) {
		return pdu, nil
	}
	if err != nil {
		return nil, err
	}
	pol, err := s.policyOf(ctx, reader, nil, room)
	if err != nil || pol == nil || pol.validSignature(pdu) {
		return pdu, err
	}
	return s.askPolicyServerIncoming(ctx, pol, pdu), nil
}

// askPolicyServerIncoming asks pol to sign the federation event pdu and
// returns the signed event only when the signature it answered verifies
// and the event still fits the size limits; otherwise pdu as it came
// (then soft-failed), so that a hostile policy server's bogus signature
// is never stored on the event.
// Spec: server-server-api, "Validating Policy Server signatures".
func (s *Server) askPolicyServerIncoming(ctx context.Context, pol *roomPolicy, pdu gomatrixserverlib.PDU) gomatrixserverlib.PDU {
	signed, err := s.askPolicyServer(ctx, pol, pdu)
	if err == nil && !pol.validSignature(signed) {
		err = fmt.Errorf("policy server %s answered a signature that does not verify", pol.via)
	}
	if err == nil {
		err = checkEventLimits(signed)
	}
	if err != nil {
		slog.DebugContext(ctx, "policy server did not sign a federation event", "event_id", pdu.EventID(), "err", err)
		return pdu
	}
	return signed
}

// policySoftFail soft-fails an accepted federation event p that lacks a
// valid signature of the policy server its room uses in the current
// state. Spec: server-server-api, "Validating Policy Server signatures".
func (s *Server) policySoftFail(ctx context.Context, tx storage.Tx, p *prepared) error {
	if p.outcome != Accepted || !needsPolicySignature(p.pdu) {
		return nil
	}
	pol, err := s.policyOf(ctx, tx, tx, p.room)
	if err != nil || pol == nil || pol.validSignature(p.pdu) {
		return err
	}
	p.outcome, p.reason = SoftFailed, fmt.Sprintf("no valid signature of the room's policy server %s", pol.via)
	return nil
}
