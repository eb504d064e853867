package clientapi

// HoldGuestLeaves stops (true) or resumes (false) the passes over the
// guest_access_leaves queue of every server of the test binary.
func HoldGuestLeaves(hold bool) { holdGuestLeaves.Store(hold) }

// SetAfterGuestJoinCheck sets (nil: clears) the function a guest's join
// runs between its check of guest_access and the join.
func SetAfterGuestJoinCheck(fn func()) { afterGuestJoinCheck = fn }
