package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota/redisstore"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota/redisstore/redistest"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota/storetest"
	"github.com/redis/go-redis/v9"
)

var prefixes atomic.Int64

// prefix is a key prefix of its own for each store a test opens, so that
// tests never see each other's keys (on a shared REDIS_URL too).
func prefix() string { return fmt.Sprintf("rlpt%d-%d", time.Now().UnixNano()%1e6, prefixes.Add(1)) }

func open(t *testing.T, rdb redis.UniversalClient, clock quota.Clock) *redisstore.Store {
	t.Helper()
	s, err := redisstore.New(context.Background(), redisstore.Options{Client: rdb, Prefix: prefix(), Clock: clock, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestConformance runs the Store contract's suite on one Redis.
func TestConformance(t *testing.T) {
	rdb, err := redisstore.NewClient(redistest.URL(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	storetest.Run(t, func(t *testing.T, clock quota.Clock) quota.Store { return open(t, rdb, clock) })
}

// TestConformanceOnCluster runs the suite on a three-node Redis Cluster:
// every script touches only keys of one hash tag, which Cluster requires.
func TestConformanceOnCluster(t *testing.T) {
	c := redistest.StartCluster(t)
	rdb, err := redisstore.NewClient("", c.Addrs)
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	storetest.Run(t, func(t *testing.T, clock quota.Clock) quota.Store { return open(t, rdb, clock) })
	t.Run("lost functions are loaded again on every node", func(t *testing.T) {
		s := open(t, rdb, nil)
		ctx := context.Background()
		reserveMany(t, s, "before")
		err := rdb.(*redis.ClusterClient).ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return c.FunctionFlush(ctx).Err() })
		if err != nil {
			t.Fatal(err)
		}
		reserveMany(t, s, "after") // keys on every node
	})
}

// reserveMany reserves 30 keys (spread over a cluster's nodes).
func reserveMany(t *testing.T, s *redisstore.Store, name string) {
	t.Helper()
	for i := range 30 {
		r, err := s.Reserve(context.Background(), quota.Request{Key: fmt.Sprintf("%s-%d", name, i), Limits: []quota.Limit{{Count: 1, Window: time.Second}}})
		if err != nil || !r.OK {
			t.Fatalf("reserve %s-%d: %+v %v", name, i, r, err)
		}
	}
}

// TestDecisionsAreFunctionCallsLoadedAgainWhenLost: on Redis 7 every
// decision is an FCALL of the library the store loaded (no script runs),
// and a Redis that lost the library (FUNCTION FLUSH, or a restart without
// persistence) gets it again at the next call, which succeeds.
func TestDecisionsAreFunctionCallsLoadedAgainWhenLost(t *testing.T) {
	srv := redistest.Start(t)
	admin := srv.Client(t)
	rdb, err := redisstore.NewClient(srv.URL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	ctx := context.Background()
	s := open(t, rdb, nil)
	reserveMany(t, s, "before")
	if err := admin.FunctionFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	reserveMany(t, s, "after")
	stats, err := admin.Info(ctx, "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"cmdstat_fcall:calls=", "cmdstat_function|load:calls=2,"} {
		if !strings.Contains(stats, want) {
			t.Errorf("INFO commandstats lacks %q:\n%s", want, stats)
		}
	}
	if strings.Contains(stats, "cmdstat_evalsha") || strings.Contains(stats, "cmdstat_eval:") {
		t.Errorf("a decision ran as a script on Redis 7:\n%s", stats)
	}
}

// TestMarginsAreSharedLatestWins: a window margin one proxy learns reaches
// the others through Redis; an older setting never replaces a newer one.
func TestMarginsAreSharedLatestWins(t *testing.T) {
	rdb, err := redisstore.NewClient(redistest.URL(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	a := open(t, rdb, nil)
	ctx := context.Background()
	if d, at, err := a.SharedMargin(ctx, "api"); err != nil || d != 0 || !at.IsZero() {
		t.Fatalf("no margin shared yet: %v %v %v", d, at, err)
	}
	now := time.Unix(1_800_000_000, 5)
	if err := a.ShareMargin(ctx, "api", 40*time.Millisecond, now); err != nil {
		t.Fatal(err)
	}
	if err := a.ShareMargin(ctx, "api", 10*time.Millisecond, now.Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	if d, at, err := a.SharedMargin(ctx, "api"); err != nil || d != 40*time.Millisecond || !at.Equal(now) {
		t.Errorf("shared margin %v set at %v (%v), want 40ms at %v: the older setting replaced the newer", d, at, err, now)
	}
}

// TestSettlesKeepTheKeyForItsWindowAndNeverRecreateIt: a settle written
// without the rest of the key (appended to it) keeps the key at least its
// longest window past the send, however little was left of its TTL; a
// settle of a key Redis no longer holds (expired, flushed) writes nothing.
func TestSettlesKeepTheKeyForItsWindowAndNeverRecreateIt(t *testing.T) {
	rdb, err := redisstore.NewClient(redistest.URL(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	clock := storetest.NewFakeClock()
	s := open(t, rdb, clock)
	ctx := context.Background()
	day := []quota.Limit{{Count: 10, Window: 24 * time.Hour}}
	settle := func(key string) {
		t.Helper()
		r, err := s.Reserve(ctx, quota.Request{Key: key, Limits: day})
		if err != nil || !r.OK {
			t.Fatalf("reserve %s: %+v %v", key, r, err)
		}
		if err := rdb.PExpire(ctx, s.KeyNames(key)[0], 10*time.Second).Err(); err != nil {
			t.Fatal(err) // as if the key had been written long ago
		}
		if key == "gone" {
			if err := rdb.Del(ctx, s.KeyNames(key)[0]).Err(); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := s.Settle(ctx, r, clock.Now()); err != nil {
			t.Fatal(err)
		}
		fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := s.Flush(fctx); err != nil {
			t.Fatal(err)
		}
	}
	settle("kept")
	if ttl, err := rdb.PTTL(ctx, s.KeyNames("kept")[0]).Result(); err != nil || ttl < 24*time.Hour {
		t.Errorf("after a settle the key lives %v more (%v), want at least its window, 24h", ttl, err)
	}
	settle("gone")
	if n, err := rdb.Exists(ctx, s.KeyNames("gone")[0]).Result(); err != nil || n != 0 {
		t.Errorf("a settle recreated a key Redis no longer held (%d, %v)", n, err)
	}
}

// TestAnotherSchemaIsRefusedClearly: replicas of a release with another key
// layout on the same Redis and prefix are refused at start, naming the
// marker, both schemas and the way out; a release with the same schema
// starts, and its own prefix stays free for the other release.
func TestAnotherSchemaIsRefusedClearly(t *testing.T) {
	rdb, err := redisstore.NewClient(redistest.URL(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	ctx := context.Background()
	p := prefix()
	if err := rdb.Set(ctx, p+":schema", "1", time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	s, err := redisstore.New(ctx, redisstore.Options{Client: rdb, Prefix: p, Timeout: 5 * time.Second})
	if !errors.Is(err, redisstore.ErrSchema) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("New on a Redis holding schema 1: %v, want ErrSchema", err)
	}
	for _, want := range []string{p + ":schema", `"1"`, `"` + redisstore.Schema + `"`, "another prefix"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the refusal %q does not name %s", err, want)
		}
	}
	if v, _ := rdb.Get(ctx, p+":schema").Result(); v != "1" {
		t.Errorf("the refused store changed the marker to %q", v)
	}
	open(t, rdb, nil) // a prefix of its own: accepted, and claimed
}
