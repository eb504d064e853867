package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// runFanout measures delivery: one sender posts -messages into a public room
// that -listeners other users have joined, each of them long-polling /sync
// with a filter for that room. For every message and every listener the
// latency is the time from the send (its due time in open loop, the start
// of the PUT in closed loop) to the moment that listener's /sync returned
// it. A message a listener has not seen -drain after the last send counts
// as an error, not a sample.
func runFanout(ctx context.Context, e *env, res *Result) error {
	o := e.opts
	res.Params["listeners"], res.Params["messages"] = o.listeners, o.messages
	if o.rate > 0 {
		res.Params["rate"] = o.rate
	}
	sender, err := e.newUser(ctx, "f")
	if err != nil {
		return fmt.Errorf("registering the sender: %w", err)
	}
	room, err := sender.createRoom(ctx, "public_chat")
	if err != nil {
		return fmt.Errorf("creating the room: %w", err)
	}
	listeners, err := e.newUsers(ctx, "l", o.listeners)
	if err != nil {
		return fmt.Errorf("registering the listeners: %w", err)
	}
	// Spec: client-server-api, "Filtering": only this room's messages, no
	// presence or account data, so that each /sync wakes for the messages.
	filter := map[string]any{
		"presence":     map[string]any{"not_types": []string{"*"}},
		"account_data": map[string]any{"not_types": []string{"*"}},
		"room": map[string]any{
			"rooms":        []string{room},
			"timeline":     map[string]any{"limit": 100, "types": []string{"m.room.message"}},
			"state":        map[string]any{"lazy_load_members": true},
			"ephemeral":    map[string]any{"not_types": []string{"*"}},
			"account_data": map[string]any{"not_types": []string{"*"}},
		},
	}
	filters := make([]string, len(listeners))
	since := make([]string, len(listeners))
	err = parallel(ctx, len(listeners), o.setupConcurrency, func(ctx context.Context, i int) error {
		l := listeners[i]
		if err := l.join(ctx, room); err != nil {
			return err
		}
		var err error
		if filters[i], err = l.uploadFilter(ctx, filter); err != nil {
			return err
		}
		resp, _, err := l.sync(ctx, "", filters[i], 0)
		if err != nil {
			return err
		}
		since[i] = resp.NextBatch
		return nil
	})
	if err != nil {
		return fmt.Errorf("joining, filtering and syncing the listeners: %w", err)
	}
	// Each listener synced right after its own join, before the later
	// listeners joined: bring every token past all the joins (not
	// measured), so that the first long polls wait for message 0 rather
	// than return the other listeners' joins while it is delivered (that
	// catch-up used to be counted as message 0's delivery latency).
	err = parallel(ctx, len(listeners), o.setupConcurrency, func(ctx context.Context, i int) error {
		resp, _, err := listeners[i].sync(ctx, since[i], filters[i], 0)
		if err != nil {
			return err
		}
		since[i] = resp.NextBatch
		return nil
	})
	if err != nil {
		return fmt.Errorf("catching the listeners up: %w", err)
	}

	// origin[i] is when message i counts as sent (sendOrigin); written by the sender
	// before the PUT, read after every goroutine has finished.
	origin := make([]time.Time, o.messages)
	dues := make([]time.Time, o.messages)    // when message i was due
	started := make([]time.Time, o.messages) // when its PUT began
	acked := make([]time.Time, o.messages)
	sent := make([]bool, o.messages)
	received := make([][]time.Time, len(listeners)) // [listener][seq], each owned by its listener
	rec := newRecorder()
	sendAck := newRecorder()
	var responses atomic.Int64 // the listeners' /sync responses while measuring
	var dials atomic.Int64     // the listeners' connections (syncConn) from their first long poll on

	listenCtx, stopListening := context.WithCancel(ctx)
	defer stopListening()
	var listening sync.WaitGroup
	for li, l := range listeners {
		received[li] = make([]time.Time, o.messages)
		listening.Add(1)
		go func() {
			defer listening.Done()
			e.listen(listenCtx, l, room, filters[li], since[li], received[li], rec, &responses, &dials)
		}()
	}

	// The listeners' first long polls are sent now: let them arrive and
	// wait before message 0, so that its delivery is not measured
	// together with 200 requests being set up (a listener that keeps up
	// has its next poll waiting when a message comes).
	select {
	case <-time.After(o.settle):
	case <-ctx.Done():
	}
	m := e.startMeasure()
	start := time.Now()
	startLate := newRecorder() // open loop: how late the tool began each PUT
	idleSince := start         // when the sender's previous PUT returned
	for i := range o.messages {
		due := time.Now()
		if o.rate > 0 {
			due = start.Add(time.Duration(float64(i) / o.rate * float64(time.Second)))
			sleepUntil(ctx, due)
		}
		if ctx.Err() != nil {
			break
		}
		dues[i], started[i] = due, time.Now()
		origin[i] = sendOrigin(due, started[i], idleSince)
		if o.rate > 0 {
			startLate.ok(started[i].Sub(due))
		}
		err := sender.send(ctx, room, e.message(i))
		idleSince = time.Now()
		if err != nil {
			sendAck.fail(err)
			continue
		}
		sent[i] = true
		acked[i] = idleSince
		sendAck.ok(acked[i].Sub(origin[i]))
	}

	// Listeners stop by themselves once they have every message; give the
	// stragglers -drain (none when nothing was sent).
	allDone := make(chan struct{})
	go func() { listening.Wait(); close(allDone) }()
	if sendAck.okCount() > 0 {
		select {
		case <-allDone:
		case <-time.After(o.drain):
		case <-ctx.Done():
		}
	}
	stopListening()
	<-allDone

	undelivered := 0
	for li := range listeners {
		for i, at := range received[li] {
			switch {
			case !sent[i]:
			case at.IsZero():
				undelivered++
			default:
				rec.ok(at.Sub(origin[i]))
			}
		}
	}
	if o.perMessage != "" {
		if err := writePerMessage(o.perMessage, start, dues, origin, started, acked, received); err != nil {
			return err
		}
	}
	rec.failN(fmt.Sprintf("deliver: not delivered within -drain %s", o.drain), undelivered)
	e.finish(res, m, rec)
	sendAck.mu.Lock()
	if s := summarize(sendAck.samples); s != nil {
		res.Other = map[string]*Summary{"send_ack": s}
	}
	sendAck.mu.Unlock()
	// send_start_late: how long after its due time the tool began each
	// PUT (open loop); the part of it while the sender had nothing in
	// flight is not counted in send_ack nor delivery (sendOrigin).
	startLate.mu.Lock()
	if s := summarize(startLate.samples); s != nil {
		if res.Other == nil {
			res.Other = map[string]*Summary{}
		}
		res.Other["send_start_late"] = s
	}
	startLate.mu.Unlock()
	for k, n := range sendAck.errors {
		if res.Errors == nil {
			res.Errors = map[string]int{}
			res.ErrorExamples = map[string]string{}
		}
		res.Errors[k] += n
		res.ErrorCount += n
		res.ErrorExamples[k] = sendAck.example[k]
	}
	// sync_responses: how many /sync answers the listeners got (from
	// their first long poll on, the settle pause included); above
	// listeners × messages, the server answered some polls with
	// something else (such as unread counts alone).
	res.Notes = map[string]float64{"messages_sent": float64(sendAck.okCount()), "sync_responses": float64(responses.Load())}
	// sync_connections: the listeners' TCP connections; equal to
	// listeners when no poll had to reconnect (plain http only).
	if n := dials.Load(); n > 0 {
		res.Notes["sync_connections"] = float64(n)
	}
	return nil
}

// sendOrigin is when a message counts as sent, the time its send_ack and
// deliveries are measured from: its due time, unless the tool itself began
// the PUT late (its goroutine woke or was scheduled late: on a machine
// whose cores the tool shares with the server and others, this reached
// 8 ms, docs/benchmarks.md "fanout20") while the sender had nothing in
// flight (its previous PUT had returned by the due time). Then the server
// could not have had the message before the PUT began, so that lateness is
// the tool's and counts from the PUT's start. A PUT that begins late
// because the previous one was still waiting for the server is measured
// from its due time, so that a slow server's queueing still counts (open
// loop, no coordinated omission).
func sendOrigin(due, putStart, idleSince time.Time) time.Time {
	if putStart.After(due) && !idleSince.After(due) {
		return putStart
	}
	return due
}

// benchMark is the myelin_bench object the tool puts in its messages.
type benchMark struct {
	MyelinBench *struct {
		Run string `json:"run"`
		Seq int    `json:"seq"`
	} `json:"myelin_bench"`
}

// listen long-polls /sync until it has seen every message of this run or
// ctx ends, and stamps received[seq] the first time message seq arrives.
// Errors are recorded (and retried after a pause); the canceled poll at the
// end is not an error.
func (e *env) listen(ctx context.Context, l *client, room, filter, since string, received []time.Time, rec *recorder, responses, dials *atomic.Int64) {
	// Each listener polls over its own connection (syncConn: less of the
	// tool's CPU per answer than net/http's client, on the cores the
	// server uses too); https falls back to net/http.
	var sc *syncConn
	if !e.opts.listenNetHTTP {
		sc = newSyncConn(l)
	}
	if sc != nil {
		sc.dials = dials
		defer sc.close()
	}
	var resp *syncResponse
	var err error
	seen := 0
	for seen < len(received) && ctx.Err() == nil {
		if sc != nil {
			resp = &syncResponse{}
			_, err = sc.sync(ctx, since, filter, 30*time.Second, resp)
		} else {
			resp, _, err = l.sync(ctx, since, filter, 30*time.Second)
		}
		// The answer is complete (read in full and decoded): its time.
		now := time.Now()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			rec.fail(err)
			select {
			case <-time.After(100 * time.Millisecond):
			case <-ctx.Done():
			}
			continue
		}
		responses.Add(1)
		since = resp.NextBatch
		for _, ev := range resp.Rooms.Join[room].Timeline.Events {
			var mark benchMark
			if ev.Type != "m.room.message" || json.Unmarshal(ev.Content, &mark) != nil || mark.MyelinBench == nil {
				continue
			}
			seq := mark.MyelinBench.Seq
			if mark.MyelinBench.Run != e.runID || seq < 0 || seq >= len(received) || !received[seq].IsZero() {
				continue
			}
			received[seq] = now
			seen++
		}
	}
}

// writePerMessage writes -per-message: for each message sent, its due
// time, when its PUT began, the time it counts as sent (sendOrigin), when
// it was acknowledged, and its first and last
// delivery among the listeners (ms from start; empty when not delivered),
// so that a slow message can be matched against server-side timestamps.
func writePerMessage(path string, start time.Time, due, origin, started, acked []time.Time, received [][]time.Time) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	ms := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return strconv.FormatFloat(float64(t.Sub(start))/float64(time.Millisecond), 'f', 3, 64)
	}
	w := bufio.NewWriter(f)
	fmt.Fprintf(w, "# start %s\n# seq\tdue_ms\tput_ms\torigin_ms\tack_ms\tfirst_ms\tlast_ms\tdelivered\n", start.UTC().Format(time.RFC3339Nano))
	for i := range origin {
		if acked[i].IsZero() {
			continue
		}
		var first, last time.Time
		n := 0
		for li := range received {
			at := received[li][i]
			if at.IsZero() {
				continue
			}
			n++
			if first.IsZero() || at.Before(first) {
				first = at
			}
			if at.After(last) {
				last = at
			}
		}
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\n", i, ms(due[i]), ms(started[i]), ms(origin[i]), ms(acked[i]), ms(first), ms(last), n)
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
