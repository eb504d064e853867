package clientapi

import "time"

// The tests' servers look for queued deactivation leaves often, so that
// a test sees a running server take up what another process queued.
func init() { deactivationPoll = 100 * time.Millisecond }
