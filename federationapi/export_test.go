package federationapi

import (
	"context"
	"encoding/json"
)

// VerifyPDU runs the checks /send makes before the roomserver sees a PDU
// (format, sizes, signatures, content hash), for benchmarks.
func (s *Server) VerifyPDU(ctx context.Context, raw json.RawMessage) error {
	_, _, err := s.checkPDU(ctx, raw, "")
	return err
}
