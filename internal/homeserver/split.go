package homeserver

import (
	"context"
	"errors"
	"time"

	"github.com/myelin-chat/myelin/clientapi"
	"github.com/myelin-chat/myelin/federationapi"
	"github.com/myelin-chat/myelin/internal/notifier"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/syncapi"
)

// Split deployments (global.components; docs/split.md): the pieces of
// assemble that carry work between processes.

// typingLogKeep is how long the shared typing log keeps a change: a
// process that starts reads the changes of that long (every typing
// notification times out within maxTypingTimeout, 2 minutes, so older
// ones have ended), and one cut off from Redis for longer starts its
// typing sets again.
const typingLogKeep = 10 * time.Minute

// typingLogRef is the client API's view of the shared typing log, which
// is built after the client API (its reader applies to it).
type typingLogRef struct{ l **notifier.Log }

var _ clientapi.TypingLog = typingLogRef{}

func (r typingLogRef) Append(ctx context.Context, payload []byte) (int64, error) {
	if *r.l == nil {
		return 0, errors.New("homeserver: typing change before the typing log was built")
	}
	return (*r.l).Append(ctx, payload)
}

// sharedEphemeral is sync's ephemeral source in a split deployment: its
// typing positions come from the shared log's counter.
type sharedEphemeral struct {
	*ephemeral
	log *notifier.Log
}

var _ syncapi.SharedTyping = (*sharedEphemeral)(nil)

// TypingIssued reports whether the shared counter has given out pos.
func (e *sharedEphemeral) TypingIssued(ctx context.Context, pos int64) (bool, error) {
	head, err := e.log.Head(ctx)
	return pos <= head, err
}

// wakeSenderOnRoomEvents wakes this process's federation sender whenever
// the room event stream advances in any process (the notifier hears the
// others through Redis), until ctx ends: in a split deployment the
// processes that write most events run no sender. The sender also reads
// the stream every 2 s, so a lost notification only delays.
func wakeSenderOnRoomEvents(ctx context.Context, notify notifier.Broadcaster, federation *federationapi.Server) {
	seen := notify.Positions()[roomserver.Stream]
	for {
		changed := notify.Changed()
		if p := notify.Positions()[roomserver.Stream]; p > seen {
			seen = p
			federation.Notify(roomserver.Stream, p)
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}
