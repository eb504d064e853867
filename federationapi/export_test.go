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

// HoldResyncs makes every partial-state resync of s wait until release
// is closed (or s closes) before it starts.
func (s *Server) HoldResyncs(release <-chan struct{}) {
	s.beforeResync = func(ctx context.Context, _ string) {
		select {
		case <-release:
		case <-ctx.Done():
		}
	}
}
