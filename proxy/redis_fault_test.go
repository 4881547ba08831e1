package proxy_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/quota/fallback"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota/redisstore/redistest"
)

const (
	unavailableLog = "quota store unavailable: deciding without it until it answers again"
	backLog        = "quota store back: deciding with it again"
)

// between returns the arrivals in [from, to).
func between(ts []time.Time, from, to time.Time) []time.Time {
	var out []time.Time
	for _, t := range ts {
		if !t.Before(from) && t.Before(to) {
			out = append(out, t)
		}
	}
	return out
}

// checkNoFailure fails on transport errors, 5xx answers and answers slower
// than bound (the store timeout and the time to forward).
func checkNoFailure(t *testing.T, out []outcome, bound time.Duration) {
	t.Helper()
	slow, bad := 0, 0
	for _, o := range out {
		if o.err != nil || o.status >= 500 {
			if bad++; bad <= 3 {
				t.Errorf("replica %d: status %d err %v %s", o.replica, o.status, o.err, o.body)
			}
		}
		if o.took > bound {
			if slow++; slow <= 3 {
				t.Errorf("replica %d: an answer took %v, longer than %v", o.replica, o.took, bound)
			}
		}
	}
}

// TestRedisKilledUnderLoadAndRestarted: two replicas in local fallback
// mode; Redis is killed while clients load them, then started again
// (empty). No request fails or waits past the store timeout; during the
// fallback each replica keeps half of the limit, so together they keep the
// bound; each replica logs the failure and the recovery once, replays its
// local sends, and serves from Redis again.
func TestRedisKilledUnderLoadAndRestarted(t *testing.T) {
	srv := redistest.Start(t)
	const n, w = 20, time.Second
	const timeout = 250 * time.Millisecond
	rec := newRecorder(t, false)
	rs := startReplicas(t, 2, srv.URL(), upstreamYAML(rec, fmt.Sprintf("limits: [%d/%v]\nmode: reject\n", n, w)), fallback.Local, timeout)
	start := time.Now()
	killAt, restartAt, end := start.Add(1500*time.Millisecond), start.Add(4500*time.Millisecond), start.Add(7500*time.Millisecond)
	ctx, cancel := context.WithDeadline(context.Background(), end)
	defer cancel()
	done := make(chan []outcome)
	go func() { done <- load(ctx, rs, 4, "http://api.test/x", "k") }()
	time.Sleep(time.Until(killAt))
	srv.Stop()
	time.Sleep(time.Until(restartAt))
	restartAt = time.Now() // Redis answers after this, never before
	restartErr := srv.Restart()
	upAt := time.Now()
	out := <-done
	if restartErr != nil {
		t.Fatalf("restarting redis: %v", restartErr)
	}
	// A request held until Redis came back would take 3 s; one bounded by
	// the store timeout takes it plus the time to forward, which a loaded
	// machine stretches: a second covers that and tells the two apart.
	checkNoFailure(t, out, timeout+time.Second)

	ts := rec.arrivals("k")
	if got := maxInWindow(between(ts, killAt.Add(w), restartAt), w); got > n {
		t.Errorf("during the fallback the upstream got %d requests within %v, want at most %d (each replica %d)", got, w, n, n/2)
	}
	if got := maxInWindow(between(ts, upAt.Add(2*w), end), w); got > n {
		t.Errorf("after recovery the upstream got %d requests within %v, want at most %d", got, w, n)
	}
	for i, r := range rs {
		// Once per transition, not per request: one outage is one failure
		// and one recovery (a store call that times out on a loaded
		// machine right after the recovery is a second, short outage).
		failures, back := r.logs.FilterMessage(unavailableLog).Len(), r.logs.FilterMessage(backLog).All()
		if failures < 1 || failures > 2 || len(back) != failures {
			t.Errorf("replica %d logged the failure %d times and the recovery %d times, want once each (twice at most)", i, failures, len(back))
			continue
		}
		if n := back[0].ContextMap()["replayed_sends"]; n == int64(0) {
			t.Errorf("replica %d replayed no send made during the fallback", i)
		}
		if r.store.Down() {
			t.Errorf("replica %d still decides without Redis", i)
		}
	}
	served := 0
	for _, o := range out {
		if o.status == http.StatusOK && o.at.After(upAt.Add(2*w)) {
			served++
		}
	}
	if served == 0 {
		t.Error("no request passed after Redis came back")
	}
	keys, err := srv.Client(t).Keys(context.Background(), "*:m").Result()
	if err != nil || len(keys) == 0 {
		t.Errorf("the restarted Redis holds no key state (%v %v): the replicas do not use it", keys, err)
	}
}

// TestRedisPausedBoundsTheWaitInEveryMode: Redis stops answering (CLIENT
// PAUSE) under load. No request waits past the store timeout; each mode
// answers as documented while it lasts; service from Redis resumes after.
func TestRedisPausedBoundsTheWaitInEveryMode(t *testing.T) {
	srv := redistest.Start(t)
	admin := srv.Client(t)
	const timeout = 250 * time.Millisecond
	for _, mode := range []fallback.Mode{fallback.Local, fallback.Reject, fallback.Allow} {
		t.Run(mode.String(), func(t *testing.T) {
			rec := newRecorder(t, false)
			rs := startReplicas(t, 1, srv.URL(), upstreamYAML(rec, "limits: [5/10s]\nmode: reject\n"), mode, timeout)
			start := time.Now()
			pauseAt, pauseFor, end := start.Add(500*time.Millisecond), 3*time.Second, start.Add(5*time.Second)
			ctx, cancel := context.WithDeadline(context.Background(), end)
			defer cancel()
			done := make(chan []outcome)
			go func() { done <- load(ctx, rs, 4, "http://api.test/x", "k-"+mode.String()) }()
			time.Sleep(time.Until(pauseAt))
			if err := admin.ClientPause(context.Background(), pauseFor).Err(); err != nil {
				cancel()
				<-done
				t.Fatal(err)
			}
			out := <-done
			checkNoFailure(t, out, timeout+time.Second) // held through the pause: 3 s
			// Answers to requests that began during the pause (the limit
			// was spent before it, so Redis itself would pass none), and
			// well inside it (after the first calls timed out).
			var ok, okInside, unavailable int
			for _, o := range out {
				if o.at.Before(pauseAt) || !o.at.Before(pauseAt.Add(pauseFor)) {
					continue
				}
				if o.status == http.StatusOK {
					ok++
				}
				if o.at.Before(pauseAt.Add(2*timeout)) || o.at.After(pauseAt.Add(pauseFor-2*timeout)) {
					continue
				}
				switch {
				case o.status == http.StatusOK:
					okInside++
				case o.status == http.StatusTooManyRequests && strings.Contains(o.body, "QUOTA_STORE_UNAVAILABLE") && o.retry != "":
					unavailable++
				}
			}
			switch mode {
			case fallback.Local:
				if ok == 0 || ok > 5 || unavailable > 0 {
					t.Errorf("local mode during the pause: %d passed, %d refused as unavailable; want the local share (1 to 5) passed", ok, unavailable)
				}
			case fallback.Reject:
				if okInside > 0 || unavailable == 0 {
					t.Errorf("reject mode during the pause: %d passed, %d refused as unavailable; want 429 with Retry-After only", okInside, unavailable)
				}
			case fallback.Allow:
				if okInside <= 5 || unavailable > 0 {
					t.Errorf("allow mode during the pause: %d passed; want more than the limit", okInside)
				}
			}
			r := rs[0]
			failures, recoveries := r.logs.FilterMessage(unavailableLog).Len(), r.logs.FilterMessage(backLog).Len()
			if failures < 1 || failures > 2 || recoveries != failures || r.store.Down() {
				t.Errorf("failure logged %d times, recovery %d times, down at the end %v; want once each (twice at most), false",
					failures, recoveries, r.store.Down())
			}
		})
	}
}
