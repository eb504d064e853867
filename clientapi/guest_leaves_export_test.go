package clientapi

// HoldGuestLeaves stops (true) or resumes (false) the passes over the
// guest_access_leaves queue of every server of the test binary.
func HoldGuestLeaves(hold bool) { holdGuestLeaves.Store(hold) }
