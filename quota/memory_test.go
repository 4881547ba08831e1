package quota

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
)

// fakeClock is a Clock that moves only when told.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

func mustLimits(t testing.TB, specs ...string) []Limit {
	t.Helper()
	var ls []Limit
	for _, s := range specs {
		l, err := ParseLimit(s)
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
	}
	return ls
}

// reserve books a slot; a request admitted at once is sent (settled) at
// once, as the proxy does.
func reserve(t testing.TB, s Store, req Request) Reservation {
	t.Helper()
	r := book(t, s, req)
	if r.OK && r.Delay() == 0 {
		if err := s.Settle(context.Background(), r, r.Now); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// book books a slot and leaves it unsettled.
func book(t testing.TB, s Store, req Request) Reservation {
	t.Helper()
	r, err := s.Reserve(context.Background(), req)
	if err != nil {
		t.Fatalf("Reserve(%q): %v", req.Key, err)
	}
	return r
}

// checkBound fails if more than l.Count of the sorted times fall in any
// half-open interval of length l.Window.
func checkBound(t testing.TB, times []time.Time, l Limit) {
	t.Helper()
	sorted := slices.Clone(times)
	slices.SortFunc(sorted, func(a, b time.Time) int { return a.Compare(b) })
	for i := l.Count; i < len(sorted); i++ {
		if gap := sorted[i].Sub(sorted[i-l.Count]); gap < l.Window {
			t.Fatalf("limit %v broken: %d slots within %v (slot %d at %v, slot %d at %v)",
				l, l.Count+1, gap, i-l.Count, sorted[i-l.Count], i, sorted[i])
		}
	}
}

func TestParseLimit(t *testing.T) {
	tests := []struct {
		in   string
		want Limit
		err  bool
	}{
		{in: "15/1s", want: Limit{15, time.Second}},
		{in: "300/1m", want: Limit{300, time.Minute}},
		{in: "10000/24h", want: Limit{10000, 24 * time.Hour}},
		{in: "350/h", want: Limit{350, time.Hour}},
		{in: " 20 / 1h ", want: Limit{20, time.Hour}},
		{in: "5/7d", want: Limit{5, 7 * 24 * time.Hour}},
		{in: "2/1m30s", want: Limit{2, 90 * time.Second}},
		{in: "10/250ms", want: Limit{10, 250 * time.Millisecond}},
		{in: "300/lol", err: true},
		{in: "300", err: true},
		{in: "0/1s", err: true},
		{in: "-1/1s", err: true},
		{in: "1.5/1s", err: true},
		{in: "10/0s", err: true},
		{in: "10/-1s", err: true},
		{in: "10/1us", err: true},
		{in: "10/400d", err: true},
		{in: "99999999999/1s", err: true},
		{in: "", err: true},
	}
	for _, tt := range tests {
		got, err := ParseLimit(tt.in)
		if tt.err {
			if err == nil {
				t.Errorf("ParseLimit(%q) = %v, want an error", tt.in, got)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseLimit(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestLimitStringRoundTrips(t *testing.T) {
	for _, s := range []string{"15/1s", "300/1m", "10000/1d", "350/1h", "10/250ms", "2/90s"} {
		l := mustLimits(t, s)[0]
		back, err := ParseLimit(l.String())
		if err != nil || back != l {
			t.Errorf("ParseLimit(%q.String() = %q) = %v, %v", s, l.String(), back, err)
		}
	}
}

func TestReserveAdmitsUpToCountThenQueuesAWindowLater(t *testing.T) {
	clock := newFakeClock()
	s := NewMemoryStore(clock)
	req := Request{Key: "k", Limits: mustLimits(t, "3/1s"), MaxWait: time.Minute, MaxQueue: 10}
	start := clock.Now()
	for i := range 3 {
		r := reserve(t, s, req)
		if !r.OK || r.Delay() != 0 {
			t.Fatalf("request %d: OK=%v delay=%v, want admitted now", i, r.OK, r.Delay())
		}
		clock.Advance(100 * time.Millisecond)
	}
	// Three slots at 0, 100ms, 200ms: the fourth waits for 0+1s.
	for i, want := range []time.Duration{time.Second, 1100 * time.Millisecond, 1200 * time.Millisecond, 2 * time.Second} {
		r := reserve(t, s, req)
		if !r.OK || r.At.Sub(start) != want {
			t.Fatalf("queued request %d: OK=%v at=+%v, want +%v", i, r.OK, r.At.Sub(start), want)
		}
		if r.Binding != req.Limits[0] {
			t.Fatalf("queued request %d: binding %v, want %v", i, r.Binding, req.Limits[0])
		}
	}
}

func TestReserveMostRestrictiveWindowWins(t *testing.T) {
	clock := newFakeClock()
	s := NewMemoryStore(clock)
	limits := mustLimits(t, "2/1s", "3/10s")
	req := Request{Key: "k", Limits: limits, MaxWait: time.Hour, MaxQueue: 100}
	start := clock.Now()
	var got []time.Duration
	var binding []Limit
	for range 6 {
		r := reserve(t, s, req)
		got = append(got, r.At.Sub(start))
		binding = append(binding, r.Binding)
	}
	want := []time.Duration{0, 0, time.Second, 10 * time.Second, 10 * time.Second, 11 * time.Second}
	if !slices.Equal(got, want) {
		t.Fatalf("slots %v, want %v", got, want)
	}
	wantBinding := []Limit{{}, {}, limits[0], limits[1], limits[1], limits[1]}
	if !slices.Equal(binding, wantBinding) {
		t.Fatalf("binding limits %v, want %v", binding, wantBinding)
	}
}

func TestRejectModeRefusesWithoutConsumingAndRetryAtSucceeds(t *testing.T) {
	clock := newFakeClock()
	s := NewMemoryStore(clock)
	req := Request{Key: "k", Limits: mustLimits(t, "2/10s")}
	reserve(t, s, req)
	clock.Advance(3 * time.Second)
	reserve(t, s, req)
	var refused Reservation
	for range 5 { // refusals consume nothing, however many
		refused = reserve(t, s, req)
		if refused.OK {
			t.Fatal("third request within the window admitted")
		}
	}
	if refused.Delay() != 7*time.Second {
		t.Fatalf("refusal says retry in %v, want 7s", refused.Delay())
	}
	clock.Set(refused.At)
	if r := reserve(t, s, req); !r.OK || r.Delay() != 0 {
		t.Fatalf("retry at the advertised time: OK=%v delay=%v", r.OK, r.Delay())
	}
}

func TestMaxWaitAndMaxQueueBoundTheQueue(t *testing.T) {
	clock := newFakeClock()
	s := NewMemoryStore(clock)
	limits := mustLimits(t, "1/1s")

	// MaxWait: the third request would wait 2s.
	req := Request{Key: "wait", Limits: limits, MaxWait: 1500 * time.Millisecond, MaxQueue: 100}
	reserve(t, s, req)
	if r := reserve(t, s, req); !r.OK || r.Delay() != time.Second {
		t.Fatalf("second request: OK=%v delay=%v, want queued 1s", r.OK, r.Delay())
	}
	r := reserve(t, s, req)
	if r.OK || r.QueueFull || r.Delay() != 2*time.Second {
		t.Fatalf("third request: OK=%v queueFull=%v delay=%v, want refused with 2s", r.OK, r.QueueFull, r.Delay())
	}

	// MaxQueue: two may wait, the third waiter is refused.
	req = Request{Key: "queue", Limits: limits, MaxWait: time.Hour, MaxQueue: 2}
	reserve(t, s, req)
	reserve(t, s, req)
	reserve(t, s, req)
	r = reserve(t, s, req)
	if r.OK || !r.QueueFull {
		t.Fatalf("fourth request with two waiting: OK=%v queueFull=%v, want refused as queue full", r.OK, r.QueueFull)
	}
	if r.Delay() != 3*time.Second {
		t.Fatalf("queue-full refusal says %v, want 3s", r.Delay())
	}
}

func TestCancelGivesTheSlotBack(t *testing.T) {
	clock := newFakeClock()
	s := NewMemoryStore(clock)
	req := Request{Key: "k", Limits: mustLimits(t, "2/1m"), MaxWait: time.Hour, MaxQueue: 10}
	a := reserve(t, s, req)
	reserve(t, s, req)
	if err := s.Cancel(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	if r := reserve(t, s, req); !r.OK || r.Delay() != 0 {
		t.Fatalf("after cancel: OK=%v delay=%v, want admitted now", r.OK, r.Delay())
	}
	if r := reserve(t, s, req); !r.OK || r.Delay() != time.Minute {
		t.Fatalf("third: OK=%v delay=%v, want queued a minute", r.OK, r.Delay())
	}
}

func TestCancelOfQueuedSlotNeverBreaksTheBound(t *testing.T) {
	// A cancelled future slot must not free the window it was booked
	// against: slots at 0 and 1s (N=2/10s), a queued one at 10s cancelled at
	// 2s; a request at 2s must still wait until 10s.
	clock := newFakeClock()
	s := NewMemoryStore(clock)
	req := Request{Key: "k", Limits: mustLimits(t, "2/10s"), MaxWait: time.Hour, MaxQueue: 10}
	start := clock.Now()
	reserve(t, s, req)
	clock.Advance(time.Second)
	reserve(t, s, req)
	q := reserve(t, s, req)
	clock.Advance(time.Second)
	if err := s.Cancel(context.Background(), q); err != nil {
		t.Fatal(err)
	}
	r := reserve(t, s, req)
	if got := r.At.Sub(start); got != 10*time.Second {
		t.Fatalf("request after cancelling a queued slot booked at +%v, want +10s", got)
	}
}

func TestSlotsKeepArrivalOrder(t *testing.T) {
	clock := newFakeClock()
	s := NewMemoryStore(clock)
	req := Request{Key: "k", Limits: mustLimits(t, "3/1s", "5/3s"), MaxWait: time.Hour, MaxQueue: 1000}
	var last time.Time
	for i := range 50 {
		r := reserve(t, s, req)
		if r.At.Before(last) {
			t.Fatalf("request %d booked at %v, before the previous %v", i, r.At, last)
		}
		last = r.At
		clock.Advance(37 * time.Millisecond)
	}
}

// TestAnyWindowBoundUnderRandomTraffic drives random arrivals, refusals and
// cancellations and checks the Store guarantee on the slots that remain.
func TestAnyWindowBoundUnderRandomTraffic(t *testing.T) {
	for seed := range uint64(20) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 1))
			clock := newFakeClock()
			s := NewMemoryStore(clock)
			limits := mustLimits(t, "5/1s", "12/5s", "30/1m")
			req := Request{Key: "k", Limits: limits, MaxWait: time.Duration(rng.IntN(20)) * time.Second, MaxQueue: 1 + rng.IntN(10)}
			var kept []Reservation
			for range 2000 {
				clock.Advance(time.Duration(rng.ExpFloat64() * float64(200*time.Millisecond)))
				r := reserve(t, s, req)
				if !r.OK {
					if r.At.Before(r.Now) {
						t.Fatalf("refusal with At %v before Now %v", r.At, r.Now)
					}
					continue
				}
				if rng.IntN(10) == 0 {
					if err := s.Cancel(context.Background(), r); err != nil {
						t.Fatal(err)
					}
					continue
				}
				kept = append(kept, r)
			}
			var times []time.Time
			for _, r := range kept {
				times = append(times, r.At)
			}
			for _, l := range limits {
				checkBound(t, times, l)
			}
		})
	}
}

// TestSaturationUsesTheWholeQuota: under constant demand the store books
// exactly Count slots per Window.
func TestSaturationUsesTheWholeQuota(t *testing.T) {
	clock := newFakeClock()
	s := NewMemoryStore(clock)
	l := mustLimits(t, "15/1s")[0]
	req := Request{Key: "k", Limits: []Limit{l}, MaxWait: time.Hour, MaxQueue: 1 << 20}
	start := clock.Now()
	booked := 0
	for {
		r := reserve(t, s, req)
		if !r.OK {
			t.Fatal("refused under generous bounds")
		}
		if r.At.Sub(start) >= 10*time.Second {
			break
		}
		booked++
		clock.Advance(time.Millisecond)
	}
	if booked != 150 {
		t.Fatalf("booked %d slots in 10 windows, want 150", booked)
	}
}

func TestKeysAreIndependentAndIdleKeysAreForgotten(t *testing.T) {
	clock := newFakeClock()
	s := NewMemoryStore(clock)
	limits := mustLimits(t, "1/1s")
	for i := range 1000 {
		r := reserve(t, s, Request{Key: fmt.Sprint("key-", i), Limits: limits})
		if !r.OK {
			t.Fatalf("key %d refused: keys must not share quota", i)
		}
	}
	if n := s.Keys(); n != 1000 {
		t.Fatalf("Keys() = %d, want 1000", n)
	}
	clock.Advance(2 * sweepEvery)
	for i := range 1000 { // touch every shard so each sweeps
		reserve(t, s, Request{Key: fmt.Sprint("other-", i), Limits: limits})
	}
	if n := s.Keys(); n != 1000 {
		t.Fatalf("Keys() after the idle ones expired = %d, want 1000 (only the new ones)", n)
	}
}

func TestReserveWithoutKeyOrLimits(t *testing.T) {
	s := NewMemoryStore(nil)
	if _, err := s.Reserve(context.Background(), Request{}); err != ErrNoKey {
		t.Fatalf("Reserve without key: err = %v, want ErrNoKey", err)
	}
	for range 100 {
		r := reserve(t, s, Request{Key: "free"})
		if !r.OK || r.Delay() != 0 {
			t.Fatal("request without limits was delayed")
		}
		if err := s.Settle(context.Background(), r, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
}

func TestHoldDelaysEveryRequestThenOneProbeGoesFirst(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	s := NewMemoryStore(clock)
	queue := Request{Key: "k", MaxWait: time.Minute, MaxQueue: 100} // no limits: holds still apply
	start := clock.Now()
	if err := s.Hold(ctx, "k", 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if r := reserve(t, s, Request{Key: "k"}); r.OK || !r.Held || r.Delay() != 2*time.Second {
		t.Fatalf("reject-mode request during a hold: OK=%v held=%v delay=%v, want refused for 2s", r.OK, r.Held, r.Delay())
	}
	a, b := reserve(t, s, queue), reserve(t, s, queue)
	if a.At.Sub(start) != 2*time.Second || b.At.Sub(start) != 2*time.Second || !a.Held {
		t.Fatalf("queued during the hold: a at +%v, b at +%v, want +2s", a.At.Sub(start), b.At.Sub(start))
	}
	clock.Set(a.At)
	a, _ = s.Release(ctx, a)
	b, _ = s.Release(ctx, b)
	if a.Delay() != 0 || !a.Probe {
		t.Fatalf("first after the hold: delay %v probe %v, want the probe, now", a.Delay(), a.Probe)
	}
	if b.Delay() == 0 || b.Probe {
		t.Fatalf("second after the hold went before the probe's outcome")
	}
	// The probe is throttled again: hold anew; then it succeeds.
	s.Settle(ctx, a, clock.Now())
	s.Hold(ctx, "k", time.Second)
	clock.Advance(time.Second)
	b, _ = s.Release(ctx, b)
	if b.Delay() != 0 || !b.Probe {
		t.Fatalf("after the second hold b should probe: delay %v probe %v", b.Delay(), b.Probe)
	}
	c := reserve(t, s, queue)
	if c.Delay() == 0 {
		t.Fatal("c went while b probes")
	}
	s.Settle(ctx, b, clock.Now())
	s.EndProbe(ctx, b)
	clock.Set(c.At)
	if c, _ = s.Release(ctx, c); c.Delay() != 0 || c.Probe {
		t.Fatalf("after a good probe: delay %v probe %v, want open", c.Delay(), c.Probe)
	}
}

func TestCancelledProbeLetsAnotherProbe(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	s := NewMemoryStore(clock)
	s.Hold(ctx, "k", time.Second)
	clock.Advance(time.Second)
	a := reserve(t, s, Request{Key: "k"})
	if !a.Probe {
		t.Fatal("no probe after the hold")
	}
	s.Cancel(ctx, a)
	if b := reserve(t, s, Request{Key: "k"}); !b.OK || !b.Probe {
		t.Fatalf("after the probe was cancelled: OK=%v probe=%v", b.OK, b.Probe)
	}
}

func TestObservedRemainingBudgetsReleasesUntilTheReset(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	s := NewMemoryStore(clock)
	req := Request{Key: "k", Limits: mustLimits(t, "100/1m"), MaxWait: time.Minute, MaxQueue: 100}
	first := reserve(t, s, req)
	sent := clock.Now()
	s.Settle(ctx, first, sent)
	// Two more leave before the answer to the first comes back.
	for range 2 {
		r := reserve(t, s, req)
		s.Settle(ctx, r, clock.Now().Add(time.Millisecond))
	}
	clock.Advance(10 * time.Millisecond)
	// The upstream counted only the first: 6 left, keep 1 in reserve.
	s.Observe(ctx, "k", Observation{SentAt: sent, Remaining: 6, Reserve: 1, ResetIn: 5 * time.Second})
	for i := range 3 { // 6 - 2 in flight - 1 reserve = 3
		if r := reserve(t, s, req); r.Delay() != 0 {
			t.Fatalf("release %d of the budget delayed %v", i, r.Delay())
		}
	}
	r := reserve(t, s, req)
	if !r.Held || r.Delay() != 5*time.Second {
		t.Fatalf("beyond the budget: held %v delay %v, want held until the reset in 5s", r.Held, r.Delay())
	}
}

func TestLearnedWindowsTightenOrReplace(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	s := NewMemoryStore(clock)
	req := Request{Key: "k", Limits: mustLimits(t, "100/1s")}
	s.Observe(ctx, "k", Observation{Remaining: -1, Limits: mustLimits(t, "2/1s"), KeepFor: time.Minute})
	reserve(t, s, req)
	reserve(t, s, req)
	if r := reserve(t, s, req); r.OK {
		t.Fatal("learned 2/1s did not tighten the configured 100/1s")
	}
	clock.Advance(2 * time.Minute) // learned windows expire
	for i := range 5 {
		if r := reserve(t, s, req); !r.OK {
			t.Fatalf("request %d refused after the learned window expired", i)
		}
	}
	s.Observe(ctx, "r", Observation{Remaining: -1, Limits: mustLimits(t, "50/1s"), Replace: true, KeepFor: time.Minute})
	for i := range 50 {
		if r := reserve(t, s, Request{Key: "r", Limits: mustLimits(t, "1/1s")}); !r.OK {
			t.Fatalf("replace mode: request %d refused; the learned 50/1s should replace 1/1s", i)
		}
	}
}

// TestConcurrentReservationsKeepTheBound runs many goroutines on one key and
// on many keys, for the race detector and the bound.
func TestConcurrentReservationsKeepTheBound(t *testing.T) {
	clock := newFakeClock()
	s := NewMemoryStore(clock)
	limits := mustLimits(t, "10/1s", "25/5s")
	var mu sync.Mutex
	var times []time.Time
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				r, err := s.Reserve(context.Background(), Request{Key: "shared", Limits: limits, MaxWait: time.Hour, MaxQueue: 1 << 20})
				if err != nil || !r.OK {
					t.Errorf("reserve: %v %v", r.OK, err)
					return
				}
				if i%7 == 0 {
					_ = s.Cancel(context.Background(), r)
				} else {
					mu.Lock()
					times = append(times, r.At)
					mu.Unlock()
				}
				s.Reserve(context.Background(), Request{Key: fmt.Sprint(g, "-", i), Limits: limits})
				if g == 0 {
					clock.Advance(3 * time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
	for _, l := range limits {
		checkBound(t, times, l)
	}
}

func BenchmarkReserveUnderQuota(b *testing.B) {
	s := NewMemoryStore(nil)
	limits := []Limit{{Count: 1 << 30 / 1000, Window: time.Second}}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			i++
			r, _ := s.Reserve(context.Background(), Request{Key: keys[i%len(keys)], Limits: limits})
			if !r.OK {
				b.Fatal("refused")
			}
		}
	})
}

var keys = func() []string {
	ks := make([]string, 1024)
	for i := range ks {
		ks[i] = fmt.Sprintf("upstream/%064x", i)
	}
	return ks
}()

func TestReleaseWaitsForALateSendTime(t *testing.T) {
	clock := newFakeClock()
	s := NewMemoryStore(clock)
	req := Request{Key: "k", Limits: mustLimits(t, "1/1s"), MaxWait: time.Hour, MaxQueue: 10}
	start := clock.Now()
	a := book(t, s, req)
	b := book(t, s, req)
	if b.At.Sub(start) != time.Second {
		t.Fatalf("b booked at +%v, want +1s", b.At.Sub(start))
	}
	// a needed a new connection: it left 300ms after its slot.
	clock.Advance(300 * time.Millisecond)
	if err := s.Settle(context.Background(), a, clock.Now()); err != nil {
		t.Fatal(err)
	}
	clock.Set(b.At)
	b, err := s.Release(context.Background(), b)
	if err != nil {
		t.Fatal(err)
	}
	if got := b.At.Sub(start); got != 1300*time.Millisecond || b.Delay() != 300*time.Millisecond {
		t.Fatalf("released b: at +%v delay %v, want moved to +1.3s", got, b.Delay())
	}
	clock.Set(b.At)
	if b, _ = s.Release(context.Background(), b); b.Delay() != 0 {
		t.Fatalf("b at its moved slot: delay %v, want 0", b.Delay())
	}
}

func TestUnsettledRequestCountsAsSentNow(t *testing.T) {
	clock := newFakeClock()
	s := NewMemoryStore(clock)
	req := Request{Key: "k", Limits: mustLimits(t, "1/1s"), MaxWait: time.Hour, MaxQueue: 10}
	start := clock.Now()
	a := book(t, s, req) // released at 0, never settled yet
	b := reserve(t, s, req)
	clock.Set(b.At) // +1s: a may still be on its way
	b, _ = s.Release(context.Background(), b)
	if got := b.At.Sub(start); got != 2*time.Second {
		t.Fatalf("b with a unsettled: moved to +%v, want +2s", got)
	}
	clock.Advance(200 * time.Millisecond)
	s.Settle(context.Background(), a, clock.Now()) // a left at +1.2s
	clock.Set(b.At)
	b, _ = s.Release(context.Background(), b)
	if got := b.At.Sub(start); got != 2200*time.Millisecond {
		t.Fatalf("b after a settled at +1.2s: at +%v, want +2.2s", got)
	}
}

// TestSimulatedClientsNeverExceedOnSendTimes runs closed-loop clients on a
// fake clock: each request is written upstream after a random delay (a new
// connection, a slow scheduler), some give up while queued. The bound must
// hold on the times requests were actually sent.
func TestSimulatedClientsNeverExceedOnSendTimes(t *testing.T) {
	for seed := range uint64(10) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 7))
			clock := newFakeClock()
			s := NewMemoryStore(clock)
			limits := mustLimits(t, "10/1s", "25/5s")
			req := Request{Key: "k", Limits: limits, MaxWait: time.Hour, MaxQueue: 1000}
			start := clock.Now()
			type event struct {
				at time.Time
				do func()
			}
			var events []event
			schedule := func(at time.Time, do func()) { events = append(events, event{at, do}) }
			var sends []time.Time
			var request func()
			var wait func(r Reservation)
			send := func(r Reservation) {
				delay := time.Duration(rng.ExpFloat64() * float64(20*time.Millisecond))
				if rng.IntN(20) == 0 {
					delay += 400 * time.Millisecond
				}
				schedule(clock.Now().Add(delay), func() {
					sends = append(sends, clock.Now())
					s.Settle(context.Background(), r, clock.Now())
					schedule(clock.Now().Add(5*time.Millisecond), request)
				})
			}
			wait = func(r Reservation) {
				if r.Delay() == 0 {
					send(r)
					return
				}
				if rng.IntN(25) == 0 { // the client gives up while queued
					schedule(clock.Now().Add(r.Delay()/2), func() {
						s.Cancel(context.Background(), r)
						schedule(clock.Now().Add(time.Millisecond), request)
					})
					return
				}
				schedule(r.At, func() {
					r2, err := s.Release(context.Background(), r)
					if err != nil {
						t.Fatal(err)
					}
					wait(r2)
				})
			}
			request = func() {
				r := book(t, s, req)
				if !r.OK {
					t.Fatal("refused under generous bounds")
				}
				wait(r)
			}
			for range 15 {
				schedule(start, request)
			}
			end := start.Add(30 * time.Second)
			for len(events) > 0 {
				slices.SortStableFunc(events, func(a, b event) int { return a.at.Compare(b.at) })
				ev := events[0]
				events = events[1:]
				if ev.at.After(end) {
					break
				}
				if ev.at.After(clock.Now()) {
					clock.Set(ev.at)
				}
				ev.do()
			}
			for _, l := range limits {
				checkBound(t, sends, l)
			}
			// 25 per 5s binds: 150 in 30s at best; slow sends cost some.
			if len(sends) < 120 {
				t.Errorf("only %d sends in 30s, want >= 120 of the 150 allowed", len(sends))
			}
		})
	}
}

func TestScoutGoesAloneUntilTheUpstreamHasSpoken(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	s := NewMemoryStore(clock)
	req := Request{Key: "k", Limits: mustLimits(t, "100/1s"), MaxWait: time.Minute, MaxQueue: 100, Scout: true}
	scout := reserve(t, s, req)
	if scout.Delay() != 0 || !scout.Probe {
		t.Fatalf("first request of a new key: delay %v probe %v, want the scout", scout.Delay(), scout.Probe)
	}
	other := reserve(t, s, req)
	if other.Delay() == 0 {
		t.Fatal("a second request went before the scout's answer")
	}
	s.Settle(ctx, scout, clock.Now())
	s.Observe(ctx, "k", Observation{SentAt: clock.Now(), Remaining: 3, ResetIn: time.Second})
	s.EndProbe(ctx, scout)
	clock.Set(other.At)
	if other, _ = s.Release(ctx, other); other.Delay() != 0 {
		t.Fatalf("after the scout's answer: delay %v", other.Delay())
	}
	reserve(t, s, req)
	reserve(t, s, req) // the budget of 3 is spent (other + these two)
	if r := reserve(t, s, req); !r.Held {
		t.Fatal("the reported budget was not enforced")
	}
	// At the reset the store knows nothing again: scout anew.
	clock.Advance(time.Second)
	a, b := reserve(t, s, req), reserve(t, s, req)
	if a.Delay() != 0 || !a.Probe || b.Delay() == 0 {
		t.Fatalf("after the reset: a delay %v probe %v, b delay %v; want a to scout alone", a.Delay(), a.Probe, b.Delay())
	}
	// A key whose upstream reports nothing scouts once.
	n := Request{Key: "quiet", Limits: mustLimits(t, "100/1s"), Scout: true}
	q := reserve(t, s, n)
	s.Settle(ctx, q, clock.Now())
	s.EndProbe(ctx, q)
	for i := range 10 {
		if r := reserve(t, s, n); r.Delay() != 0 || r.Probe {
			t.Fatalf("request %d of a quiet key after its scout: delay %v probe %v", i, r.Delay(), r.Probe)
		}
	}
}

// Review finding: a request released but still being written must count as
// sent now for a request that would leave at once, and must not be pruned.
func TestInFlightRequestBlocksImmediateAdmissionAndIsNotPruned(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	s := NewMemoryStore(clock)
	req := Request{Key: "k", Limits: mustLimits(t, "1/1s")}
	a := book(t, s, req) // released at 0, its TLS handshake is slow
	clock.Advance(time.Second)
	if b := book(t, s, req); b.OK {
		t.Fatal("b admitted at +1s while a, released at 0, was still on its way")
	}
	clock.Advance(time.Second) // +2s: a's slot is older than the window
	if b := book(t, s, req); b.OK {
		t.Fatal("b admitted at +2s: a's unsettled entry was pruned")
	}
	s.Settle(ctx, a, clock.Now()) // a written at +2s
	clock.Advance(999 * time.Millisecond)
	if b := book(t, s, req); b.OK {
		t.Fatal("b admitted within a second of a's real send time")
	}
	clock.Advance(time.Millisecond)
	if b := book(t, s, req); !b.OK {
		t.Fatal("b refused a full second after a was sent")
	}
}

// Review finding: keys held but never used again must be forgotten.
func TestHeldKeysThatNeverProbeAreForgotten(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	s := NewMemoryStore(clock)
	for i := range 100 {
		s.Hold(ctx, fmt.Sprint("held-", i), time.Second)
	}
	clock.Advance(time.Second + ProbeTimeout + sweepEvery)
	for i := range 1000 {
		reserve(t, s, Request{Key: fmt.Sprint("other-", i), Limits: mustLimits(t, "1/1s")})
	}
	if n := s.Keys(); n != 1000 {
		t.Fatalf("Keys() = %d, want 1000: held keys that never probed were kept", n)
	}
}

func TestInspectDescribesAKey(t *testing.T) {
	clock := newFakeClock()
	s := NewMemoryStore(clock)
	limits := mustLimits(t, "3/1s", "10/1m")
	ctx := context.Background()
	if st, err := s.Inspect(ctx, "k", limits); err != nil || len(st.Limits) != 2 || st.Limits[0].Used != 0 || !st.Limits[0].NextFree.Equal(clock.Now()) || st.Budget != -1 {
		t.Fatalf("unknown key: %+v %v", st, err)
	}
	for range 3 {
		r := book(t, s, Request{Key: "k", Limits: limits})
		s.Settle(ctx, r, clock.Now())
	}
	queued := reserve(t, s, Request{Key: "k", Limits: limits, MaxWait: 5 * time.Second, MaxQueue: 10})
	if !queued.OK || queued.Delay() == 0 {
		t.Fatalf("fourth request: %+v, want queued", queued)
	}
	s.Hold(ctx, "k", 2*time.Second)
	st, err := s.Inspect(ctx, "k", limits)
	if err != nil {
		t.Fatal(err)
	}
	if st.Limits[0].Used != 3 || st.Limits[1].Used != 3 || st.Queued != 1 || st.InFlight != 0 {
		t.Errorf("used %d/%d queued %d in flight %d, want 3/3, 1, 0", st.Limits[0].Used, st.Limits[1].Used, st.Queued, st.InFlight)
	}
	if want := clock.Now().Add(2 * time.Second); !st.Limits[0].NextFree.Equal(clock.Now().Add(time.Second)) || !st.HoldUntil.Equal(want) || !st.Probing {
		t.Errorf("next free %v hold until %v probing %v", st.Limits[0].NextFree.Sub(clock.Now()), st.HoldUntil.Sub(clock.Now()), st.Probing)
	}
}
