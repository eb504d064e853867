package roomserver

import (
	"bytes"
	"crypto/sha1"
	"testing"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// lowerSHA1 returns whichever of d's events a and b has the lower
// sha1(event_id): room version 1's tie-break (rooms/v1, "State
// resolution").
func lowerSHA1(d *dag, a, b string) string {
	ha := sha1.Sum([]byte(d.byName[a].EventID()))
	hb := sha1.Sum([]byte(d.byName[b].EventID()))
	if bytes.Compare(ha[:], hb[:]) <= 0 {
		return a
	}
	return b
}

// v1Scenarios are forks of baseRoom in room version 1, each with the
// state its fork tips resolve to by rooms/v1 "State resolution", worked
// out by hand: power levels, join rules and members are applied in
// ascending depth (descending sha1(event_id) among equals) while the
// authorisation rules allow them; any other conflicted key takes the
// event with the highest depth, then the lowest sha1(event_id).
func v1Scenarios() []srScenario {
	return []srScenario{
		{
			// The deeper topic wins, although the other branch's was made
			// later: version 2 would order these by the power level
			// mainline and then origin_server_ts, and pick "a".
			name: "highest depth wins a non-auth conflict",
			forks: func(d *dag) []string {
				d.add("b", bob, "m.room.topic", ptr(""), `{"topic":"one"}`, "bob-join")
				d.add("b2", bob, "m.room.topic", ptr(""), `{"topic":"two"}`, "b")
				d.add("a", alice, "m.room.topic", ptr(""), `{"topic":"late"}`, "bob-join")
				return []string{"a", "b2"}
			},
			want: map[string]string{"m.room.topic|": "b2"},
		},
		{
			// Equal depths: the lower sha1(event_id) wins.
			name: "equal depths: lowest sha1 of the event ID",
			forks: func(d *dag) []string {
				d.add("a", alice, "m.room.topic", ptr(""), `{"topic":"alice's"}`, "bob-join")
				d.add("b", bob, "m.room.topic", ptr(""), `{"topic":"bob's"}`, "bob-join")
				return []string{"a", "b"}
			},
		},
		{
			// alice demotes bob at depth 6; on the other branch bob sets a
			// topic (6) and then promotes charlie (7). In ascending depth
			// alice's change comes first and is applied; bob's is then
			// not allowed (10 < 50), which ends the power level pass.
			name: "power levels in ascending depth while allowed",
			forks: func(d *dag) []string {
				d.add("a", alice, "m.room.power_levels", ptr(""), `{"users":{"@alice:test.local":100,"@bob:test.local":10},"events":{"m.room.power_levels":50},"state_default":50}`, "bob-join")
				d.add("b", bob, "m.room.topic", ptr(""), `{"topic":"bob's"}`, "bob-join")
				d.add("b2", bob, "m.room.power_levels", ptr(""), `{"users":{"@alice:test.local":100,"@bob:test.local":90,"@charlie:test.local":80},"events":{"m.room.power_levels":50},"state_default":50}`, "b")
				return []string{"a", "b2"}
			},
			want: map[string]string{"m.room.power_levels|": "a"},
		},
		{
			// A ban and a join of charlie at equal depth: whichever comes
			// first in the member pass, the ban stands (applied after the
			// join it is allowed; applied first, the join is not).
			name: "ban racing a join",
			forks: func(d *dag) []string {
				d.add("a", alice, "m.room.member", ptr(charlie), `{"membership":"ban"}`, "bob-join")
				d.add("b", charlie, "m.room.member", ptr(charlie), `{"membership":"join"}`, "bob-join")
				return []string{"a", "b"}
			},
			want: map[string]string{"m.room.member|" + charlie: "a"},
		},
	}
}

// Room version 1's state resolution (gomatrixserverlib's, behind a
// panic guard in resolveStates) on forks whose outcome follows from the
// spec's rules, in several input orders, which all agree.
// Spec: rooms/v1, "State resolution".
func TestStateResolutionV1(t *testing.T) {
	for _, sc := range v1Scenarios() {
		t.Run(sc.name, func(t *testing.T) {
			storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
				d := baseRoom(t, "1")
				tips := sc.forks(d)
				want := sc.want
				if want == nil {
					want = map[string]string{"m.room.topic|": lowerSHA1(d, "a", "b")}
				}
				d.add("merge", alice, "m.room.message", nil, `{"body":"merge"}`, tips...)
				checkEveryOrder(t, db, d, 20, want)
			})
		})
	}
}
