package notifier

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Log is an ordered log of messages shared by the processes of a split
// deployment, for state that each process keeps in memory and that must
// read the same in every process at every position (typing
// notifications): a message gets its position from one counter, and
// every process, the appender's included, applies every message in
// position order. Unlike a publish/subscribe channel, nothing is lost while a process is
// briefly cut off from Redis: it reads on from where it stopped when it
// is back.
//
// The messages are a Redis stream (<prefix>log) beside a counter
// (<prefix>pos); Append takes the next position and adds the message in
// one script, so the stream holds the positions in order. The stream
// keeps the messages of the last keep; a process that starts reads them
// all, and one that was away longer finds a gap (a message whose Prev is
// not the last position it applied). Positions are never behind Redis's
// clock in milliseconds, so they keep growing if Redis loses its data,
// and stay ahead of those a single process gave out (its clock at start
// plus its changes) when a deployment goes back to several processes.
//
// Concurrency: every method is safe for concurrent use; apply is called
// on one goroutine of the Log, one message at a time.
type Log struct {
	client  *redis.Client
	stream  string
	counter string
	keep    time.Duration
	apply   func(LogEntry)
	log     *slog.Logger
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	once    sync.Once
	// now is this process's clock (tests set another); skew is Redis's
	// clock less it, in nanoseconds, as last measured (measureSkew), so
	// that each entry's At reads on this process's clock.
	now  func() time.Time
	skew atomic.Int64
}

// skewEvery is how often the reader measures the difference between
// Redis's clock and this process's.
const skewEvery = 30 * time.Second

// LogEntry is one message of a Log.
type LogEntry struct {
	Pos int64
	// Prev is the position of the message before it in the stream (0 if
	// none was kept), or -1 for a message that does not say (written by
	// an earlier version, whose positions went up by one).
	Prev int64
	// At is when Redis added it, on this process's clock: Redis's
	// clock less the difference between the two as last measured, so
	// that a timeout counted from At against time.Now ends when it
	// should even where the process's clock and Redis's disagree.
	At      time.Time
	Payload []byte
}

// appendScript takes the next position and adds ARGV[1] at it to the
// stream KEYS[2], trimming the messages older than ARGV[2] milliseconds.
// The position is one past the counter KEYS[1], or Redis's clock in
// milliseconds if that is later: the counter follows the clock, so it is
// never behind the positions a single process gave out (those start at
// its clock) when a deployment goes from one process back to several.
// Each message also carries the position of the message before it in the
// stream (0 if none is kept), which is how a reader knows it missed none.
var appendScript = redis.NewScript(`
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local p = tonumber(redis.call('GET', KEYS[1]) or '0') + 1
if p < ms then p = ms end
local q = 0
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #last > 0 then
  local f = last[1][2]
  for i = 1, #f, 2 do
    if f[i] == 'p' then q = tonumber(f[i + 1]) end
  end
end
redis.call('SET', KEYS[1], p)
redis.call('XADD', KEYS[2], 'MINID', '~', ms - tonumber(ARGV[2]), '*', 'p', p, 'q', q, 'd', ARGV[1])
return p`)

// NewLog connects to Redis (url as for NewRedis) and starts reading the
// log under prefix from its oldest kept message; apply receives every
// message in position order until Close.
func NewLog(ctx context.Context, url, prefix string, keep time.Duration, logger *slog.Logger, apply func(LogEntry)) (*Log, error) {
	return newLog(ctx, url, prefix, keep, logger, apply, time.Now)
}

// newLog is NewLog on the clock now.
func newLog(ctx context.Context, url, prefix string, keep time.Duration, logger *slog.Logger, apply func(LogEntry), now func() time.Time) (*Log, error) {
	ropts, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("notifier: redis URL: %w", err)
	}
	ropts.ContextTimeoutEnabled = true
	if logger == nil {
		logger = slog.Default()
	}
	l := &Log{client: redis.NewClient(ropts), stream: prefix + "log", counter: prefix + "pos", keep: keep, apply: apply, log: logger, now: now}
	if err := l.client.Ping(ctx).Err(); err != nil {
		l.client.Close()
		return nil, fmt.Errorf("notifier: redis %s: %w", redactURL(url), err)
	}
	if err := l.measureSkew(ctx); err != nil {
		l.client.Close()
		return nil, fmt.Errorf("notifier: redis %s: %w", redactURL(url), err)
	}
	bg, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	l.wg.Add(1)
	go l.read(bg)
	return l, nil
}

// Append adds payload to the log and returns its position. It takes
// effect in this process, as in every other, when the reader applies it.
func (l *Log) Append(ctx context.Context, payload []byte) (int64, error) {
	return appendScript.Run(ctx, l.client, []string{l.counter, l.stream}, payload, l.keep.Milliseconds()).Int64()
}

// headScript returns the counter KEYS[1], first raised to Redis's clock
// in milliseconds if it is behind it (as appendScript's positions are).
var headScript = redis.NewScript(`
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local c = tonumber(redis.call('GET', KEYS[1]) or '0')
if c < ms then
  c = ms
  redis.call('SET', KEYS[1], c)
end
return c`)

// Head returns the last position given out or passed over: the counter,
// raised to the clock first. Positions issued before the log existed, or
// while the deployment ran as one process without it (that process's
// clock in milliseconds at its start, plus its changes), then read as
// given out, and every later message comes after them.
func (l *Log) Head(ctx context.Context) (int64, error) {
	return headScript.Run(ctx, l.client, []string{l.counter}).Int64()
}

// read applies the stream's messages in order until ctx ends.
func (l *Log) read(ctx context.Context) {
	defer l.wg.Done()
	last := "0-0"
	backoff := rateLimitedLog{every: time.Minute}
	measured := l.now()
	for ctx.Err() == nil {
		if l.now().Sub(measured) >= skewEvery {
			measured = l.now()
			if err := l.measureSkew(ctx); err != nil && ctx.Err() == nil {
				backoff.warn(l.log, "reading Redis's clock failed; keeping the last difference", "err", err)
			}
		}
		res, err := l.client.XRead(ctx, &redis.XReadArgs{Streams: []string{l.stream, last}, Count: 500, Block: 10 * time.Second}).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			backoff.warn(l.log, "reading the shared log failed (Redis unreachable?); retrying", "stream", l.stream, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		for _, s := range res {
			for _, m := range s.Messages {
				last = m.ID
				e, ok := parseLogMessage(m)
				if !ok {
					l.log.Warn("ignoring a malformed message of the shared log", "stream", l.stream, "id", m.ID)
					continue
				}
				e.At = e.At.Add(-time.Duration(l.skew.Load()))
				l.apply(e)
			}
		}
	}
}

// measureSkew reads Redis's clock (TIME) and keeps its difference from
// this process's at the midpoint of the round trip.
func (l *Log) measureSkew(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	before := l.now()
	redisNow, err := l.client.Time(ctx).Result()
	if err != nil {
		return err
	}
	after := l.now()
	l.skew.Store(int64(redisNow.Sub(before.Add(after.Sub(before) / 2))))
	return nil
}

// parseLogMessage reads a stream message written by appendScript.
func parseLogMessage(m redis.XMessage) (LogEntry, bool) {
	ps, _ := m.Values["p"].(string)
	d, _ := m.Values["d"].(string)
	pos, err := strconv.ParseInt(ps, 10, 64)
	prev := int64(-1)
	if qs, ok := m.Values["q"].(string); ok {
		q, err := strconv.ParseInt(qs, 10, 64)
		if err != nil || q < 0 {
			return LogEntry{}, false
		}
		prev = q
	}
	msPart, _, _ := strings.Cut(m.ID, "-")
	ms, err2 := strconv.ParseInt(msPart, 10, 64)
	if err != nil || err2 != nil || pos <= 0 {
		return LogEntry{}, false
	}
	return LogEntry{Pos: pos, Prev: prev, At: time.UnixMilli(ms), Payload: []byte(d)}, true
}

// Close stops reading and disconnects.
func (l *Log) Close() error {
	var err error
	l.once.Do(func() {
		l.cancel()
		err = l.client.Close() // ends a blocked read
		l.wg.Wait()
	})
	return err
}
