package federationapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/myelin-chat/myelin/roomserver"
)

var _ roomserver.PolicySigner = (*Server)(nil)

// maxPolicySignBytes bounds a policy server's answer to
// POST /_matrix/policy/v1/sign: a map of one signature, or an error.
const maxPolicySignBytes = 64 << 10

// PolicySign asks the policy server server to sign event, a PDU in
// federation format, with a signed request, and returns the signatures
// it answered. An error answer (a refusal: 400 M_FORBIDDEN, 404, 429, …)
// is a *roomserver.PolicyRefusal with the policy server's errcode and
// message as it sent them; anything else (no answer, a bad body) is a
// plain error.
// Spec: server-server-api, "POST /_matrix/policy/v1/sign".
func (s *Server) PolicySign(ctx context.Context, server string, event json.RawMessage) (map[string]map[string]string, error) {
	var sigs map[string]map[string]string
	err := s.client.signedLimited(ctx, server, http.MethodPost, "/_matrix/policy/v1/sign", event, &sigs, maxPolicySignBytes)
	var re *RemoteError
	if errors.As(err, &re) {
		return nil, &roomserver.PolicyRefusal{Server: server, Status: re.Status, Code: re.Code, Message: re.Message}
	}
	if err != nil {
		return nil, err
	}
	return sigs, nil
}
