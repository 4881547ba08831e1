package redisstore_test

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota/redisstore"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota/redisstore/redistest"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota/storetest"
)

var update = flag.Bool("update", false, "rewrite testdata/decisions.golden from the store's answers")

// TestDecisionsMatchTheGoldenTrace replays a fixed pseudo-random day of
// traffic (reservations, releases, settles and settles again, cancels,
// holds, probes, upstream reports with learned windows, replayed fallback
// sends, inspections) on five keys with exact, bucketed and mixed limits,
// on a fake clock, and compares every answer with testdata/decisions.golden,
// recorded from the store's first release: a change made for speed must
// not change a decision. Regenerate it (go test -run Golden -update) only
// for a change of meaning, and say so.
func TestDecisionsMatchTheGoldenTrace(t *testing.T) {
	checkGolden(t, redistest.URL(t), goldenSteps)
}

// goldenSteps is the length of the golden trace, in steps of traffic.
const goldenSteps = 3000

// TestWithoutFunctionsScriptsDecideTheSame: on a Redis without functions
// (before 7, or FUNCTION renamed away) the store runs its decisions as
// scripts, which answer as the golden trace says. The scripts and the
// functions are built from the same Lua, so its first fifth is enough to
// show that the script path runs it the same way.
func TestWithoutFunctionsScriptsDecideTheSame(t *testing.T) {
	srv := redistest.Start(t, "--rename-command", "FUNCTION", "")
	checkGolden(t, srv.URL(), goldenSteps/5)
	stats, err := srv.Client(t).Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stats, "cmdstat_evalsha:") {
		t.Errorf("no script ran:\n%s", stats)
	}
}

// checkGolden runs the first steps of the traffic on the Redis at url and
// compares the answers with as many lines of the golden trace.
func checkGolden(t *testing.T, url string, steps int) {
	rdb, err := redisstore.NewClient(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	clock := storetest.NewFakeClock()
	s := open(t, rdb, clock)
	got := trace(t, s, clock, steps)
	const golden = "testdata/decisions.golden"
	if *update && steps == goldenSteps {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	gl, wl := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
	if steps < goldenSteps {
		gl = gl[:len(gl)-1] // the text after the last newline: none
		if len(gl) > len(wl) {
			t.Fatalf("%d answers in %d steps, the golden trace has %d in %d", len(gl), steps, len(wl), goldenSteps)
		}
		wl = wl[:len(gl)]
	}
	for i := range min(len(gl), len(wl)) {
		if gl[i] != wl[i] {
			t.Fatalf("answer %d differs from the golden trace:\n got %s\nwant %s", i+1, gl[i], wl[i])
		}
	}
	if len(gl) != len(wl) {
		t.Fatalf("%d answers, the golden trace has %d", len(gl), len(wl))
	}
}

// trace runs steps of the traffic and writes one line per answer.
func trace(t *testing.T, s *redisstore.Store, clock *storetest.FakeClock, steps int) []byte {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(10, 20))
	start := clock.Now()
	ts := func(x time.Time) int64 {
		if x.IsZero() {
			return 0
		}
		return x.Sub(start).Microseconds()
	}
	keys := []struct {
		name   string
		limits []quota.Limit
	}{
		{"exact", []quota.Limit{{Count: 3, Window: time.Second}, {Count: 20, Window: 10 * time.Second}}},
		{"bucketed", []quota.Limit{{Count: 4100, Window: 10 * time.Second}}},
		{"daily", []quota.Limit{{Count: 300, Window: time.Minute}, {Count: 10000, Window: 24 * time.Hour}}},
		{"hubspot", []quota.Limit{{Count: 100, Window: 10 * time.Second}, {Count: 250000, Window: 24 * time.Hour}}},
		{"fullday", []quota.Limit{{Count: 4500, Window: 24 * time.Hour}}},
	}
	var out bytes.Buffer
	line := func(format string, args ...any) {
		fmt.Fprintf(&out, format, args...)
		out.WriteByte('\n')
	}
	res := func(r quota.Reservation) string {
		var b strings.Builder
		fmt.Fprintf(&b, "ok=%t now=%d at=%d", r.OK, ts(r.Now), ts(r.At))
		if r.ID != 0 {
			fmt.Fprintf(&b, " slot=%d id=%d", ts(r.Slot), r.ID)
		}
		if r.Binding.Count != 0 {
			fmt.Fprintf(&b, " bind=%s", r.Binding)
		}
		for _, f := range []struct {
			on   bool
			name string
		}{{r.QueueFull, "full"}, {r.Held, "held"}, {r.Probe, "probe"}, {r.Booked, "booked"}, {r.Wake != nil, "wake"}} {
			if f.on {
				b.WriteString(" " + f.name)
			}
		}
		if !r.Sent.IsZero() {
			fmt.Fprintf(&b, " sent=%d", ts(r.Sent))
		}
		return b.String()
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	flush := func() {
		t.Helper()
		fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		must(s.Flush(fctx))
	}
	var open []quota.Reservation // OK reservations not yet ended
	drop := func(i int) { open = append(open[:i], open[i+1:]...) }
	request := func(k int) quota.Request {
		req := quota.Request{Key: keys[k].name, Limits: keys[k].limits, Scout: rng.IntN(50) == 0}
		req.MaxWait = []time.Duration{0, 2 * time.Second, 30 * time.Second}[rng.IntN(3)]
		req.MaxQueue = []int{0, 5, 1000}[rng.IntN(3)]
		if rng.IntN(4) == 0 {
			req.Book = quota.Booking{Round: time.Second, Grace: time.Second, Early: 250 * time.Millisecond}
		}
		return req
	}
	// sent settles r, sent now, and ends its probe most times.
	sent := func(step int, r quota.Reservation) {
		r, err := s.Settle(ctx, r, clock.Now())
		must(err)
		if r.Probe && rng.IntN(10) < 7 {
			must(s.EndProbe(ctx, r))
			line("%d endprobe %s id=%d", step, r.Key, r.ID)
		}
	}
	for step := range steps {
		k := rng.IntN(len(keys))
		name := keys[k].name
		switch p := rng.IntN(100); {
		case p < 35:
			req := request(k)
			r, err := s.Reserve(ctx, req)
			must(err)
			line("%d reserve %s wait=%v queue=%d scout=%t book=%t: %s", step, name, req.MaxWait, req.MaxQueue, req.Scout, req.Book.Grace > 0, res(r))
			if r.OK && r.ID != 0 {
				open = append(open, r)
			}
		case p < 39:
			// a burst: many requests at one instant, those admitted at
			// once sent at once; one line with a digest of the answers
			n := 50 + rng.IntN(500)
			if keys[k].limits[0].Count > quota.ExactCount {
				n *= 3 // enough to reach a bucketed limit
			}
			ok, now := 0, 0
			h := fnv.New64a()
			var last quota.Reservation
			for range n {
				req := request(k)
				req.Scout = false
				r, err := s.Reserve(ctx, req)
				must(err)
				io.WriteString(h, res(r))
				last = r
				switch {
				case r.OK && r.Delay() == 0:
					now++
					sent(step, r)
				case r.OK:
					ok++
					open = append(open, r)
				}
			}
			flush()
			line("%d burst %s n=%d now=%d queued=%d digest=%x last: %s", step, name, n, now, ok, h.Sum64(), res(last))
		case p < 54 && len(open) > 0:
			i := rng.IntN(len(open))
			r := open[i]
			if !r.Sent.IsZero() || r.Delay() == 0 {
				// released or sent: settle (again, later)
				at := clock.Now().Add(-time.Duration(rng.IntN(50_000)) * time.Microsecond)
				if !r.Sent.IsZero() {
					at = clock.Now()
				}
				r2, err := s.Settle(ctx, r, at)
				must(err)
				line("%d settle %s id=%d: %s", step, r.Key, r.ID, res(r2))
				if r.Sent.IsZero() && rng.IntN(5) == 0 {
					open[i] = r2 // may be settled again
				} else {
					drop(i)
				}
				if r2.Probe && rng.IntN(10) < 7 {
					must(s.EndProbe(ctx, r2))
					line("%d endprobe %s id=%d", step, r.Key, r.ID)
				}
				if rng.IntN(2) == 0 {
					flush()
				}
				continue
			}
			if d := r.Delay(); rng.IntN(2) == 0 {
				flush()
				clock.Advance(d)
				line("%d advance %v", step, d)
			}
			r2, err := s.Release(ctx, r)
			must(err)
			line("%d release %s id=%d: %s", step, r.Key, r.ID, res(r2))
			open[i] = r2
		case p < 58 && len(open) > 0:
			i := rng.IntN(len(open))
			must(s.Cancel(ctx, open[i]))
			line("%d cancel %s id=%d", step, open[i].Key, open[i].ID)
			drop(i)
		case p < 59:
			d := []time.Duration{0, time.Second, 5 * time.Second}[rng.IntN(3)]
			must(s.Hold(ctx, name, d))
			line("%d hold %s %v", step, name, d)
		case p < 64:
			l := keys[k].limits[rng.IntN(len(keys[k].limits))]
			o := quota.Observation{
				SentAt:    clock.Now().Add(-time.Duration(rng.IntN(200)) * time.Millisecond),
				Limit:     l.Count,
				Remaining: l.Count - rng.IntN(l.Count/10+2),
				Reserve:   0.05,
				Delay:     10 * time.Millisecond,
			}
			if rng.IntN(5) == 0 {
				o.Remaining = rng.IntN(l.Count+2) - 1
			}
			if rng.IntN(4) > 0 {
				o.ResetAt = clock.Now().Add(time.Duration(1+rng.IntN(int(min(l.Window, 30*time.Second)/time.Second))) * time.Second)
				if rng.IntN(2) == 0 {
					o.Period = l.Window
				}
			}
			switch rng.IntN(6) {
			case 0: // a window of the upstream's own, learned
				o.Limits = []quota.Limit{{Count: 2 + rng.IntN(10), Window: 2 * time.Second}}
				o.KeepFor = time.Minute
				o.Replace = rng.IntN(2) == 0
			case 1, 2: // the reported window, as the proxy passes it
				if o.Period > 0 {
					o.Limits = []quota.Limit{{Count: o.Limit, Window: o.Period + 10*time.Millisecond}}
					o.KeepFor = max(2*o.Period, time.Minute)
				}
			}
			must(s.Observe(ctx, name, o))
			flush() // applied at this time
			line("%d observe %s sent=%d limit=%d remaining=%d reset=%d period=%v limits=%v replace=%t",
				step, name, ts(o.SentAt), o.Limit, o.Remaining, ts(o.ResetAt), o.Period, o.Limits, o.Replace)
		case p < 65:
			sent := []time.Time{clock.Now().Add(-2 * time.Second), clock.Now().Add(-time.Second)}
			must(s.Record(name, keys[k].limits, sent))
			flush()
			line("%d record %s", step, name)
		case p < 68:
			st, err := s.Inspect(ctx, name, keys[k].limits)
			must(err)
			var b strings.Builder
			for _, l := range st.Limits {
				fmt.Fprintf(&b, " %s used=%d free=%d", l.Limit, l.Used, ts(l.NextFree))
			}
			line("%d inspect %s now=%d queued=%d booked=%d inflight=%d hold=%d probing=%t budget=%d until=%d learned=%v until=%d%s",
				step, name, ts(st.Now), st.Queued, st.Booked, st.InFlight, ts(st.HoldUntil), st.Probing, st.Budget, ts(st.BudgetUntil),
				st.Learned, ts(st.LearnedUntil), b.String())
		default:
			d := time.Duration(rng.IntN(300_000)) * time.Microsecond
			if rng.IntN(30) == 0 {
				d = time.Duration(rng.IntN(7200)) * time.Second
			}
			flush() // nothing queued is applied at a later time than it was queued
			clock.Advance(d)
			// the requests whose slot came are released, and most sent
			h := fnv.New64a()
			released := 0
			for i := 0; i < len(open); i++ {
				r := open[i]
				if !r.Sent.IsZero() || r.At.After(clock.Now()) || rng.IntN(10) == 0 {
					continue
				}
				r, err := s.Release(ctx, r)
				must(err)
				io.WriteString(h, res(r))
				open[i] = r
				if r.Delay() == 0 && rng.IntN(10) > 0 {
					released++
					sent(step, r)
					drop(i)
					i--
				}
			}
			flush()
			line("%d advance %v released=%d digest=%x", step, d, released, h.Sum64())
		}
	}
	return out.Bytes()
}
