package syncapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/myelin-chat/myelin/internal/mxerr"
)

// redisConns keeps sliding sync connection states in Redis, for split
// deployments (global.redis_url): any sync process continues a
// connection that another one served. Each connection (user, device,
// conn_id) is one hash under the deployment's prefix: field "seq" is the
// connection's sequence counter (HINCRBY), and each stored state is the
// field named by its sequence number. As in memory (slidingConn.store),
// saving a state drops the states older than the one the request
// started from, so that the state a retried request starts from is
// still there, as is every state two concurrent requests returned. The
// hash expires connTTL after it was last written; a pos of an expired
// connection is M_UNKNOWN_POS, which MSC4186 allows ("the server may
// expire connections"). A device has at most maxConnsPerDevice
// connections, tracked in a sorted set (deviceKey, saveScript).
type redisConns struct {
	client *redis.Client
	prefix string
	ttl    time.Duration
}

const (
	// connTTL is how long a connection's states are kept after its last
	// response.
	connTTL = time.Hour
	// redisConnTimeout bounds each Redis round trip of a request.
	redisConnTimeout = 3 * time.Second
	// maxOtherStates bounds the states kept besides the one a request
	// started from and the one it stored: a client sending many
	// requests from one pos at once cannot grow its hash without end.
	maxOtherStates = 8
)

func newRedisConns(url, prefix string) (*redisConns, error) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("syncapi: redis url: %w", err)
	}
	return &redisConns{client: redis.NewClient(opts), prefix: prefix + "sliding:", ttl: connTTL}, nil
}

// key names a connection's hash. User and device IDs are length-prefixed
// so that no two (user, device, conn) triples share a key.
func (c *redisConns) key(k connKey) string {
	return c.prefix + strconv.Itoa(len(k.user)) + ":" + k.user + strconv.Itoa(len(k.device)) + ":" + k.device + k.conn
}

// unavailable is the answer while Redis does not answer: 503 rather than
// M_UNKNOWN_POS, because the connection's states are not lost, only out
// of reach for now. A client retries the same request after an error
// (keeping its pos) and continues where it was once Redis is back,
// whereas M_UNKNOWN_POS would make every client of the deployment start
// its connection again, sending every room in full.
func unavailable(err error) error {
	return mxerr.New(mxerr.Unknown, "sliding sync connection store unavailable, retry: %v", err).WithStatus(http.StatusServiceUnavailable)
}

// load returns the state stored under seq whose heads are heads (the
// first part of the pos): nil when there is none (unknown or expired).
// Checking the heads too means a pos issued before the connection
// expired never matches a later state that reuses its sequence number.
func (c *redisConns) load(ctx context.Context, k connKey, seq int64, heads string) (*connState, error) {
	ctx, cancel := context.WithTimeout(ctx, redisConnTimeout)
	defer cancel()
	data, err := c.client.HGet(ctx, c.key(k), strconv.FormatInt(seq, 10)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, unavailable(err)
	}
	st, storedHeads, err := decodeConnState(data)
	if err != nil {
		// Not written by this version; treated as unknown, so the client
		// starts again.
		return nil, nil
	}
	if storedHeads != heads {
		return nil, nil
	}
	return st, nil
}

// deviceKey names the sorted set of a device's connections: each
// member is a connection's hash key, scored by the Redis time (ms) of
// its last save. It cannot be a connection's key: those go on with a
// digit after the prefix.
func (c *redisConns) deviceKey(k connKey) string {
	return c.prefix + "d:" + strconv.Itoa(len(k.user)) + ":" + k.user + k.device
}

// saveScript stores ARGV[2] under the next sequence number of hash
// KEYS[1] and returns that number. It drops every other state older than
// ARGV[1] (the sequence number the request started from; -1 for a new
// connection: all others), and past ARGV[4] others besides ARGV[1] the
// oldest of them; the hash then expires ARGV[3] ms later.
//
// KEYS[2] is the device's set of connections (deviceKey): the script
// scores KEYS[1] there with the time, forgets the members unused for
// longer than the expiry, and past ARGV[5] members deletes the least
// recently used ones (other than KEYS[1]) with their hashes, so a
// device never has more than ARGV[5] connections, however many
// processes create them at once (a script runs alone). A request from
// a state (ARGV[1] >= 0) of a connection no longer there (dropped so,
// or expired) stores nothing and returns 0: its pos is unknown.
// The hashes deleted are not in KEYS: this needs one Redis, not a
// cluster, as the rest of split mode does.
var saveScript = redis.NewScript(`
local from = tonumber(ARGV[1])
if from >= 0 and redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HSET', KEYS[1], tostring(seq), ARGV[2])
local others = {}
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if f ~= 'seq' then
    local n = tonumber(f)
    if n ~= seq then
      if from < 0 or n < from then
        redis.call('HDEL', KEYS[1], f)
      elseif n ~= from then
        table.insert(others, n)
      end
    end
  end
end
local maxOthers = tonumber(ARGV[4])
if #others > maxOthers then
  table.sort(others)
  for i = 1, #others - maxOthers do
    redis.call('HDEL', KEYS[1], string.format('%d', others[i]))
  end
end
redis.call('PEXPIRE', KEYS[1], ttl)
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. string.format('%d', now - ttl))) do
  if m ~= KEYS[1] then
    redis.call('DEL', m)
  end
  redis.call('ZREM', KEYS[2], m)
end
redis.call('ZADD', KEYS[2], now, KEYS[1])
local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[5])
if excess > 0 then
  for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, excess)) do
    if excess > 0 and m ~= KEYS[1] then
      redis.call('DEL', m)
      redis.call('ZREM', KEYS[2], m)
      excess = excess - 1
    end
  end
end
redis.call('PEXPIRE', KEYS[2], ttl)
return seq
`)

// save stores st, the state after a response to a request that started
// from state from (-1: a new connection), and returns its sequence
// number; M_UNKNOWN_POS when the connection was dropped meanwhile (its
// device's least recently used past maxConnsPerDevice, or expired).
func (c *redisConns) save(ctx context.Context, k connKey, from int64, st *connState) (int64, error) {
	// The response is computed; storing it does not depend on the
	// client still waiting.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), redisConnTimeout)
	defer cancel()
	seq, err := saveScript.Run(ctx, c.client, []string{c.key(k), c.deviceKey(k)}, from, encodeConnState(st), c.ttl.Milliseconds(), maxOtherStates, maxConnsPerDevice).Int64()
	if err != nil {
		return 0, unavailable(err)
	}
	if seq == 0 {
		return 0, mxerr.New(unknownPos, "unknown pos; start the connection again")
	}
	return seq, nil
}

// dropScript deletes every connection of the device whose set of
// connections (deviceKey) is KEYS[1], and the set. The set names each
// connection that can still be there: a connection leaves it only when
// deleted, or unused for longer than the expiry, its hash then expired;
// and the set expires no earlier than the hashes it names. A request of
// the device in flight that saves afterwards finds its connection gone
// (saveScript returns 0): its pos is unknown.
var dropScript = redis.NewScript(`
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  redis.call('DEL', m)
end
return redis.call('DEL', KEYS[1])
`)

// dropDevices deletes every connection of userID's devices deviceIDs.
func (c *redisConns) dropDevices(ctx context.Context, userID string, deviceIDs ...string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), redisConnTimeout)
	defer cancel()
	for _, d := range deviceIDs {
		if err := dropScript.Run(ctx, c.client, []string{c.deviceKey(connKey{user: userID, device: d})}).Err(); err != nil {
			return fmt.Errorf("syncapi: dropping the sliding sync connections of %s's device %s: %w", userID, d, err)
		}
	}
	return nil
}

// storedConn is connState as stored: heads as its token string, each
// room as [pos, timeline_limit, index into sigs] (required_state
// signatures repeat across rooms, so each is stored once).
type storedConn struct {
	Heads      string              `json:"h"`
	Rooms      map[string][3]int64 `json:"r,omitempty"`
	Sigs       []string            `json:"s,omitempty"`
	ThreadSubs int64               `json:"t,omitempty"`
}

func encodeConnState(st *connState) []byte {
	out := storedConn{Heads: st.heads.String(), ThreadSubs: st.threadSubs, Rooms: make(map[string][3]int64, len(st.rooms))}
	sigIndex := map[string]int{}
	for id, r := range st.rooms {
		i, ok := sigIndex[r.stateSig]
		if !ok {
			i = len(out.Sigs)
			sigIndex[r.stateSig] = i
			out.Sigs = append(out.Sigs, r.stateSig)
		}
		out.Rooms[id] = [3]int64{r.pos, int64(r.timelineLimit), int64(i)}
	}
	data, _ := json.Marshal(out) // strings and integers only
	return data
}

func decodeConnState(data []byte) (st *connState, heads string, err error) {
	var in storedConn
	if err := json.Unmarshal(data, &in); err != nil {
		return nil, "", err
	}
	h, err := parseSyncToken(in.Heads)
	if err != nil {
		return nil, "", err
	}
	st = &connState{heads: h, threadSubs: in.ThreadSubs, rooms: make(map[string]sentRoom, len(in.Rooms))}
	for id, r := range in.Rooms {
		if r[2] < 0 || r[2] >= int64(len(in.Sigs)) {
			return nil, "", errors.New("syncapi: stored sliding state names a missing signature")
		}
		st.rooms[id] = sentRoom{pos: r[0], timelineLimit: int(r[1]), stateSig: in.Sigs[r[2]]}
	}
	return st, in.Heads, nil
}

// splitPos splits a pos into its heads token and sequence number.
func splitPos(pos string) (heads string, seq int64, ok bool) {
	heads, seqText, found := strings.Cut(pos, ".")
	seq, err := strconv.ParseInt(seqText, 10, 64)
	return heads, seq, found && err == nil && seq > 0
}
