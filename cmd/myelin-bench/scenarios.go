package main

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"
)

// runRegister times -n registrations, -concurrency at a time. Each sample is
// the whole flow (for -auth dummy: the 401 round trip and the second POST).
func runRegister(ctx context.Context, e *env, res *Result) error {
	o := e.opts
	res.Params["n"], res.Params["concurrency"], res.Params["auth"] = o.n, o.concurrency, o.auth.mode
	rec := newRecorder()
	m := e.startMeasure()
	closedLoop(ctx, o.n, o.concurrency, rec, func(ctx context.Context, worker, i int) error {
		_, err := e.newUser(ctx, "r")
		return err
	})
	e.finish(res, m, rec)
	return nil
}

// runRooms times -n room creations by -concurrency users (one per worker).
func runRooms(ctx context.Context, e *env, res *Result) error {
	o := e.opts
	res.Params["n"], res.Params["concurrency"], res.Params["preset"] = o.n, o.concurrency, "private_chat"
	users, err := e.newUsers(ctx, "c", o.concurrency)
	if err != nil {
		return fmt.Errorf("registering the room creators: %w", err)
	}
	rec := newRecorder()
	m := e.startMeasure()
	closedLoop(ctx, o.n, o.concurrency, rec, func(ctx context.Context, worker, i int) error {
		_, err := users[worker].createRoom(ctx, "private_chat")
		return err
	})
	e.finish(res, m, rec)
	return nil
}

// runSend times -messages sends by -concurrency senders. Each sender is its
// own user; with -same-room they all post in one public room, otherwise each
// in a room of its own. Closed loop: every sender sends its next message as
// soon as the previous one is acknowledged, and latency is the request's
// round trip. Open loop (-rate): message i is due at start + i/rate, the
// senders take the due messages in order, and latency is measured from the
// due time, so time spent queued behind a slow answer counts.
func runSend(ctx context.Context, e *env, res *Result) error {
	o := e.opts
	res.Params["messages"], res.Params["concurrency"], res.Params["same_room"] = o.messages, o.concurrency, o.sameRoom
	if o.rate > 0 {
		res.Params["rate"] = o.rate
	}
	senders, err := e.newUsers(ctx, "s", o.concurrency)
	if err != nil {
		return fmt.Errorf("registering the senders: %w", err)
	}
	rooms := make([]string, len(senders))
	if o.sameRoom {
		room, err := senders[0].createRoom(ctx, "public_chat")
		if err != nil {
			return fmt.Errorf("creating the room: %w", err)
		}
		err = parallel(ctx, len(senders), o.setupConcurrency, func(ctx context.Context, i int) error {
			rooms[i] = room
			if i == 0 {
				return nil
			}
			return senders[i].join(ctx, room)
		})
		if err != nil {
			return fmt.Errorf("joining the room: %w", err)
		}
	} else {
		err = parallel(ctx, len(senders), o.setupConcurrency, func(ctx context.Context, i int) error {
			var err error
			rooms[i], err = senders[i].createRoom(ctx, "private_chat")
			return err
		})
		if err != nil {
			return fmt.Errorf("creating the rooms: %w", err)
		}
	}
	// Each worker sends over its own connection (sendConn: less of the
	// tool's CPU per request than net/http's client, on the cores the
	// server uses too); https falls back to net/http.
	conns := make([]*sendConn, len(senders))
	for i, s := range senders {
		conns[i] = newSendConn(s)
	}
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.close()
			}
		}
	}()
	send := func(ctx context.Context, worker, i int) error {
		if c := conns[worker]; c != nil {
			return c.send(ctx, rooms[worker], e.message(i))
		}
		return senders[worker].send(ctx, rooms[worker], e.message(i))
	}
	rec := newRecorder()
	m := e.startMeasure()
	if o.rate > 0 {
		openLoop(ctx, o.messages, o.rate, o.concurrency, rec, send)
	} else {
		closedLoop(ctx, o.messages, o.concurrency, rec, send)
	}
	e.finish(res, m, rec)
	return nil
}

// message is the content of the i-th message of this run. The myelin_bench
// object lets a listener recognise it: run ID, sequence number and the
// sender's wall clock in milliseconds (nanoseconds would exceed the range
// of integers that canonical JSON allows, 2^53, and servers reject them).
//
// A struct rather than a map: the same JSON (encoding/json writes a map's
// keys sorted, and the fields are in that order), less of the tool's CPU.
func (e *env) message(i int) *benchContent {
	return &benchContent{
		Body:    fmt.Sprintf("myelin-bench %s message %d", e.runID, i),
		MsgType: "m.text",
		MyelinBench: benchContentMark{
			Run:    e.runID,
			SentMS: time.Now().UnixMilli(),
			Seq:    i,
		},
	}
}

// benchContent is the content of the tool's messages; fields in JSON key order.
type benchContent struct {
	Body        string           `json:"body"`
	MsgType     string           `json:"msgtype"`
	MyelinBench benchContentMark `json:"myelin_bench"`
}

type benchContentMark struct {
	Run    string `json:"run"`
	SentMS int64  `json:"sent_ms"`
	Seq    int    `json:"seq"`
}

// runInitialSync prepares one user in -rooms rooms with -per-room messages
// each, then times -repeat full initial syncs (no since token, no filter).
// An answer that lacks any of the rooms counts as an error, not a sample.
func runInitialSync(ctx context.Context, e *env, res *Result) error {
	o := e.opts
	res.Params["rooms"], res.Params["per_room"], res.Params["repeat"] = o.rooms, o.perRoom, o.repeat
	user, err := e.newUser(ctx, "i")
	if err != nil {
		return fmt.Errorf("registering the user: %w", err)
	}
	rooms := make([]string, o.rooms)
	err = parallel(ctx, o.rooms, o.setupConcurrency, func(ctx context.Context, i int) error {
		var err error
		if rooms[i], err = user.createRoom(ctx, "private_chat"); err != nil {
			return err
		}
		for k := 0; k < o.perRoom; k++ {
			if err := user.send(ctx, rooms[i], e.message(i*o.perRoom+k)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("preparing %d rooms with %d messages: %w", o.rooms, o.perRoom, err)
	}
	select {
	case <-time.After(o.settle):
	case <-ctx.Done():
		return ctx.Err()
	}

	rec := newRecorder()
	var bytes int64
	var first time.Duration // the first sync's time, when it succeeded
	var later []time.Duration
	m := e.startMeasure()
	for i := range o.repeat {
		start := time.Now()
		resp, n, err := user.sync(ctx, "", "", 0)
		took := time.Since(start)
		if err != nil {
			rec.fail(err)
			continue
		}
		missing := 0
		for _, r := range rooms {
			if _, ok := resp.Rooms.Join[r]; !ok {
				missing++
			}
		}
		if missing > 0 {
			rec.fail(&requestError{Op: "sync", Err: fmt.Errorf("the answer lacks %d of the %d rooms", missing, len(rooms))})
			continue
		}
		rec.ok(took)
		bytes += int64(n)
		if i == 0 {
			first = took
		} else {
			later = append(later, took)
		}
	}
	e.finish(res, m, rec)
	if res.OK > 0 {
		res.Notes = map[string]float64{"response_kb": round(float64(bytes)/float64(res.OK)/1024, 1)}
	}
	// The first sync is the user's first after the rooms were made: what a
	// client that logs in waits for, with every cache the server has cold
	// for this user. The repeats find them warm, so the two are reported
	// apart (the percentiles above cover all of them).
	if first > 0 {
		res.Notes["first_ms"] = round(ms(first), 2)
	}
	if len(later) > 0 {
		res.Other = map[string]*Summary{"later_syncs": summarize(later)}
	}
	return nil
}

// closedLoop runs do(worker, i) for i in 0..total-1 on `workers`
// goroutines, each starting its next operation when the previous one ends.
func closedLoop(ctx context.Context, total, workers int, rec *recorder, do func(ctx context.Context, worker, i int) error) {
	var next atomic.Int64
	done := make(chan struct{})
	for w := range workers {
		go func() {
			defer func() { done <- struct{}{} }()
			for {
				i := int(next.Add(1) - 1)
				if i >= total || ctx.Err() != nil {
					return
				}
				start := time.Now()
				if err := do(ctx, w, i); err != nil {
					rec.fail(err)
					continue
				}
				rec.ok(time.Since(start))
			}
		}()
	}
	for range workers {
		<-done
	}
	countUnrun(rec, total)
}

// openLoop runs do(worker, i) for i in 0..total-1 with operation i due at
// start + i/rate. Workers take operations in order; a worker that takes an
// operation early waits for its due time, one that takes it late starts at
// once. Latency is measured from the due time.
func openLoop(ctx context.Context, total int, rate float64, workers int, rec *recorder, do func(ctx context.Context, worker, i int) error) {
	start := time.Now()
	var next atomic.Int64
	done := make(chan struct{})
	for w := range workers {
		go func() {
			defer func() { done <- struct{}{} }()
			for {
				i := int(next.Add(1) - 1)
				if i >= total {
					return
				}
				due := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
				sleepUntil(ctx, due)
				if ctx.Err() != nil {
					return
				}
				if err := do(ctx, w, i); err != nil {
					rec.fail(err)
					continue
				}
				rec.ok(time.Since(due))
			}
		}()
	}
	for range workers {
		<-done
	}
	countUnrun(rec, total)
}

// countUnrun counts the operations that never ran because the run's
// -timeout ended first, so that they are not silently dropped.
func countUnrun(rec *recorder, total int) {
	ok, failed := rec.count()
	rec.failN("not run: -timeout reached", total-ok-failed)
}
