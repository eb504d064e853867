package pushserver

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/clientapi"
	"github.com/myelin-chat/myelin/internal/notifier"
	"github.com/myelin-chat/myelin/roomserver"
)

// countingStreams stands in for the roomserver and clientapi: it counts
// the consumer's reads of each stream and has nothing new to give.
type countingStreams struct {
	Rooms
	eventReads, receiptReads atomic.Int64
}

func (c *countingStreams) StreamPosition(context.Context) (int64, error) {
	c.eventReads.Add(1)
	return 0, nil
}

func (c *countingStreams) ReceiptsAfter(context.Context, int64, int) ([]clientapi.Receipt, error) {
	c.receiptReads.Add(1)
	return nil, nil
}

// A wake reads only the stream whose position moved: typing or the
// consumer's own counts stream read nothing, a receipt reads receipts
// only, a room event reads room events only. The first run reads both.
func TestConsumerReadsOnlyAdvancedStreams(t *testing.T) {
	streams := &countingStreams{}
	n := notifier.New()
	s := &Server{rooms: streams, receipts: streams, notifier: n, log: slog.Default()}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.runConsumer(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	want := func(what string, events, receipts int64) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for streams.eventReads.Load() != events || streams.receiptReads.Load() != receipts {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d room event reads, %d receipt reads; want %d, %d", what,
					streams.eventReads.Load(), streams.receiptReads.Load(), events, receipts)
			}
			time.Sleep(time.Millisecond)
		}
		// And nothing more follows.
		time.Sleep(50 * time.Millisecond)
		if streams.eventReads.Load() != events || streams.receiptReads.Load() != receipts {
			t.Fatalf("%s: %d room event reads, %d receipt reads; want %d, %d", what,
				streams.eventReads.Load(), streams.receiptReads.Load(), events, receipts)
		}
	}
	want("start", 1, 1)
	n.Notify("typing", 1)
	n.Notify(CountsStream, 1)
	want("typing and counts", 1, 1)
	n.Notify(receiptsStream, 1)
	want("a receipt", 1, 2)
	n.Notify(roomserver.Stream, 1)
	want("a room event", 2, 2)
}
