package testserver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// RedisEnv names the environment variable holding the Redis URL that
// split-mode tests use.
const RedisEnv = "MYELIN_TEST_REDIS"

// UseRedis returns a config edit that points a server at the test Redis
// under a key prefix of its own, so that tests running at once do not see
// each other's wake-ups; every key under the prefix is deleted when the
// test ends. Servers started with the same edit share the prefix, as the
// processes of one deployment do. The test is skipped when RedisEnv is
// not set.
func UseRedis(t testing.TB) func(*config.Config) {
	t.Helper()
	redisURL := os.Getenv(RedisEnv)
	if redisURL == "" {
		t.Skip("split-mode test skipped: set " + RedisEnv + " to a Redis URL (e.g. redis://127.0.0.1:6379/0) to run it")
	}
	var b6 [6]byte
	_, _ = rand.Read(b6[:])
	prefix := "myelin-test:" + hex.EncodeToString(b6[:]) + ":"
	t.Cleanup(func() {
		o, err := redis.ParseURL(redisURL)
		if err != nil {
			return
		}
		c := redis.NewClient(o)
		defer c.Close()
		ctx := context.Background()
		iter := c.Scan(ctx, 0, prefix+"*", 100).Iterator()
		for iter.Next(ctx) {
			c.Del(ctx, iter.Val())
		}
	})
	return func(c *config.Config) { c.Global.RedisURL, c.Global.RedisPrefix = redisURL, prefix }
}

// StartSplit starts two processes of one split deployment: both on the
// same PostgreSQL database with the same signing key, waking each other
// through the test Redis (UseRedis). The test is skipped without Redis
// or PostgreSQL.
func StartSplit(t *testing.T) (a, b *Server) {
	t.Helper()
	useRedis := UseRedis(t)
	if os.Getenv(storagetest.PostgresEnv) == "" {
		t.Skipf("split-mode test skipped: it needs PostgreSQL shared by two processes; set %s", storagetest.PostgresEnv)
	}
	a = Start(t, storage.Postgres, useRedis)
	b = Start(t, storage.Postgres, func(c *config.Config) {
		useRedis(c)
		c.Database = a.Config.Database
		c.Global.SigningKeyPath = a.Config.Global.SigningKeyPath
	})
	return a, b
}

// StartSplitWith is StartSplit with a config edit per process (after the
// shared database, key and Redis are set), e.g. the components each runs.
func StartSplitWith(t *testing.T, editA, editB func(*config.Config)) (a, b *Server) {
	t.Helper()
	s := StartSplitN(t, editA, editB)
	return s[0], s[1]
}

// StartSplitN starts one process of a split deployment per edit (nil:
// none), all on the first one's PostgreSQL database and signing key and
// one Redis prefix, as StartSplit does for two. The test is skipped
// without Redis or PostgreSQL.
func StartSplitN(t *testing.T, edits ...func(*config.Config)) []*Server {
	t.Helper()
	useRedis := UseRedis(t)
	if os.Getenv(storagetest.PostgresEnv) == "" {
		t.Skipf("split-mode test skipped: it needs PostgreSQL shared by several processes; set %s", storagetest.PostgresEnv)
	}
	var out []*Server
	for i, edit := range edits {
		out = append(out, Start(t, storage.Postgres, func(c *config.Config) {
			useRedis(c)
			if i > 0 {
				c.Database = out[0].Config.Database
				c.Global.SigningKeyPath = out[0].Config.Global.SigningKeyPath
			}
			if edit != nil {
				edit(c)
			}
		}))
	}
	return out
}
