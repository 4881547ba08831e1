// Package storetest is the conformance suite of quota.Store: the contract's
// properties written once, run against every store (the memory store, the
// Redis store, Redis Cluster). A store under test reads time from the
// FakeClock the suite gives it, so no test sleeps.
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T, clock quota.Clock) quota.Store {
//			return quota.NewMemoryStore(clock)
//		})
//	}
package storetest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
)

// Factory returns a fresh, empty store reading time from clock. It
// releases the store with t.Cleanup.
type Factory func(t *testing.T, clock quota.Clock) quota.Store

// FakeClock is a quota.Clock that moves only when told.
type FakeClock struct {
	mu sync.Mutex
	t  time.Time
}

// NewFakeClock returns a clock at a fixed, whole-second instant.
func NewFakeClock() *FakeClock { return &FakeClock{t: time.Unix(1_700_000_000, 0)} }

// Now implements quota.Clock.
func (c *FakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Advance moves the clock by d.
func (c *FakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// Set moves the clock to t.
func (c *FakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

// Run runs every conformance test against stores made by open.
func Run(t *testing.T, open Factory) {
	tests := []struct {
		name string
		f    func(t *testing.T, e *env)
	}{
		{"ReserveAdmitsUpToCountThenQueuesAWindowLater", reserveAdmitsUpToCountThenQueuesAWindowLater},
		{"MostRestrictiveWindowWins", mostRestrictiveWindowWins},
		{"RefusalConsumesNothingAndRetryAtSucceeds", refusalConsumesNothingAndRetryAtSucceeds},
		{"MaxWaitAndMaxQueueBoundTheQueue", maxWaitAndMaxQueueBoundTheQueue},
		{"CancelGivesTheSlotBack", cancelGivesTheSlotBack},
		{"CancelOfQueuedSlotNeverBreaksTheBound", cancelOfQueuedSlotNeverBreaksTheBound},
		{"SlotsKeepArrivalOrder", slotsKeepArrivalOrder},
		{"AnyWindowBoundUnderRandomTraffic", anyWindowBoundUnderRandomTraffic},
		{"SaturationUsesTheWholeQuota", saturationUsesTheWholeQuota},
		{"KeysAreIndependent", keysAreIndependent},
		{"ReserveWithoutKeyOrLimits", reserveWithoutKeyOrLimits},
		{"HoldDelaysEveryRequestThenOneProbeGoesFirst", holdDelaysEveryRequestThenOneProbeGoesFirst},
		{"WaitersForAProbeAreWokenWhenItEnds", waitersForAProbeAreWokenWhenItEnds},
		{"CancelledProbeLetsAnotherProbe", cancelledProbeLetsAnotherProbe},
		{"LearnedWindowsTightenOrReplace", learnedWindowsTightenOrReplace},
		{"ConcurrentReservationsKeepTheBound", concurrentReservationsKeepTheBound},
		{"ReleaseWaitsForALateSendTime", releaseWaitsForALateSendTime},
		{"EarlyReleaseKeepsTheSlot", earlyReleaseKeepsTheSlot},
		{"UnsettledRequestCountsAsSentNow", unsettledRequestCountsAsSentNow},
		{"SettledAgainLaterCountsFromTheLaterTime", settledAgainLaterCountsFromTheLaterTime},
		{"SimulatedClientsNeverExceedOnSendTimes", simulatedClientsNeverExceedOnSendTimes},
		{"ScoutGoesAloneUntilTheUpstreamHasSpoken", scoutGoesAloneUntilTheUpstreamHasSpoken},
		{"InFlightRequestBlocksImmediateAdmissionAndIsNotPruned", inFlightRequestBlocksImmediateAdmissionAndIsNotPruned},
		{"ChangedLimitsAreJudgedAgainstRecordedSends", changedLimitsAreJudgedAgainstRecordedSends},
		{"LargeLimitsKeepTheBoundAndLoseAtMostOneSlot", largeLimitsKeepTheBoundAndLoseAtMostOneSlot},
		{"RefusalsBookSuccessiveSlotsForTheirRetries", refusalsBookSuccessiveSlotsForTheirRetries},
		{"BookingsLapseAndCountAgainstMaxQueue", bookingsLapseAndCountAgainstMaxQueue},
		{"EarlyRetryWaitsForItsBooking", earlyRetryWaitsForItsBooking},
		{"SoleCallerGetsTheWholeReportedQuota", soleCallerGetsTheWholeReportedQuota},
		{"SoleCallerIsNotHeldPastItsOwnWindow", soleCallerIsNotHeldPastItsOwnWindow},
		{"SendsArrivingLateStillCountAsOurs", sendsArrivingLateStillCountAsOurs},
		{"OtherCallerLeavesAReserveAndNothingIsCountedTwice", otherCallerLeavesAReserveAndNothingIsCountedTwice},
		{"ReportWithoutItsWindowKeepsTheReserve", reportWithoutItsWindowKeepsTheReserve},
		{"RefusalWhileTheBudgetIsSpentNamesTheReset", refusalWhileTheBudgetIsSpentNamesTheReset},
		{"InspectDescribesAKey", inspectDescribesAKey},
		{"TransitKeepsNamedTimesTrue", transitKeepsNamedTimesTrue},
		{"TransitNeverLetsTheWindowOverflow", transitNeverLetsTheWindowOverflow},
		{"TransitCountsForARetryThatTakesItsBooking", transitCountsForARetryThatTakesItsBooking},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := NewFakeClock()
			tt.f(t, &env{t: t, clock: clock, s: open(t, clock), ctx: context.Background()})
		})
	}
}

// env is one test's store and clock.
type env struct {
	t     *testing.T
	clock *FakeClock
	s     quota.Store
	ctx   context.Context
}

func limits(t testing.TB, specs ...string) []quota.Limit {
	t.Helper()
	var ls []quota.Limit
	for _, s := range specs {
		l, err := quota.ParseLimit(s)
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
	}
	return ls
}

// book books a slot and leaves it unsettled.
func (e *env) book(req quota.Request) quota.Reservation {
	e.t.Helper()
	r, err := e.s.Reserve(e.ctx, req)
	if err != nil {
		e.t.Fatalf("Reserve(%q): %v", req.Key, err)
	}
	return r
}

// reserve books a slot; a request admitted at once is sent (settled) at
// once, as the proxy does.
func (e *env) reserve(req quota.Request) quota.Reservation {
	e.t.Helper()
	r := e.book(req)
	if r.OK && r.Delay() == 0 {
		r = e.settle(r, e.clock.Now())
	}
	return r
}

func (e *env) settle(r quota.Reservation, at time.Time) quota.Reservation {
	e.t.Helper()
	r, err := e.s.Settle(e.ctx, r, at)
	if err != nil {
		e.t.Fatalf("Settle: %v", err)
	}
	return r
}

func (e *env) release(r quota.Reservation) quota.Reservation {
	e.t.Helper()
	r, err := e.s.Release(e.ctx, r)
	if err != nil {
		e.t.Fatalf("Release: %v", err)
	}
	return r
}

func (e *env) cancel(r quota.Reservation) {
	e.t.Helper()
	if err := e.s.Cancel(e.ctx, r); err != nil {
		e.t.Fatalf("Cancel: %v", err)
	}
}

// checkBound fails if more than l.Count of the times fall in any half-open
// interval of length l.Window.
func checkBound(t testing.TB, times []time.Time, l quota.Limit) {
	t.Helper()
	sorted := slices.Clone(times)
	slices.SortFunc(sorted, func(a, b time.Time) int { return a.Compare(b) })
	for i := l.Count; i < len(sorted); i++ {
		if gap := sorted[i].Sub(sorted[i-l.Count]); gap < l.Window {
			t.Fatalf("limit %v broken: %d sends within %v (send %d at %v, send %d at %v)",
				l, l.Count+1, gap, i-l.Count, sorted[i-l.Count], i, sorted[i])
		}
	}
}

func reserveAdmitsUpToCountThenQueuesAWindowLater(t *testing.T, e *env) {
	req := quota.Request{Key: "k", Limits: limits(t, "3/1s"), MaxWait: time.Minute, MaxQueue: 10}
	start := e.clock.Now()
	for i := range 3 {
		r := e.reserve(req)
		if !r.OK || r.Delay() != 0 {
			t.Fatalf("request %d: OK=%v delay=%v, want admitted now", i, r.OK, r.Delay())
		}
		e.clock.Advance(100 * time.Millisecond)
	}
	// Three sends at 0, 100ms, 200ms: the fourth waits for 0+1s.
	for i, want := range []time.Duration{time.Second, 1100 * time.Millisecond, 1200 * time.Millisecond, 2 * time.Second} {
		r := e.reserve(req)
		if !r.OK || r.At.Sub(start) != want {
			t.Fatalf("queued request %d: OK=%v at=+%v, want +%v", i, r.OK, r.At.Sub(start), want)
		}
		if r.Binding != req.Limits[0] {
			t.Fatalf("queued request %d: binding %v, want %v", i, r.Binding, req.Limits[0])
		}
	}
}

func mostRestrictiveWindowWins(t *testing.T, e *env) {
	ls := limits(t, "2/1s", "3/10s")
	req := quota.Request{Key: "k", Limits: ls, MaxWait: time.Hour, MaxQueue: 100}
	start := e.clock.Now()
	var got []time.Duration
	var binding []quota.Limit
	for range 6 {
		r := e.reserve(req)
		got = append(got, r.At.Sub(start))
		binding = append(binding, r.Binding)
	}
	want := []time.Duration{0, 0, time.Second, 10 * time.Second, 10 * time.Second, 11 * time.Second}
	if !slices.Equal(got, want) {
		t.Fatalf("slots %v, want %v", got, want)
	}
	wantBinding := []quota.Limit{{}, {}, ls[0], ls[1], ls[1], ls[1]}
	if !slices.Equal(binding, wantBinding) {
		t.Fatalf("binding limits %v, want %v", binding, wantBinding)
	}
}

func refusalConsumesNothingAndRetryAtSucceeds(t *testing.T, e *env) {
	req := quota.Request{Key: "k", Limits: limits(t, "2/10s")}
	e.reserve(req)
	e.clock.Advance(3 * time.Second)
	e.reserve(req)
	var refused quota.Reservation
	for range 5 { // refusals without Book consume nothing, however many
		refused = e.reserve(req)
		if refused.OK || refused.Booked {
			t.Fatalf("third request within the window: OK=%v booked=%v, want refused", refused.OK, refused.Booked)
		}
	}
	if refused.Delay() != 7*time.Second {
		t.Fatalf("refusal says retry in %v, want 7s", refused.Delay())
	}
	e.clock.Set(refused.At)
	if r := e.reserve(req); !r.OK || r.Delay() != 0 {
		t.Fatalf("retry at the advertised time: OK=%v delay=%v", r.OK, r.Delay())
	}
}

func maxWaitAndMaxQueueBoundTheQueue(t *testing.T, e *env) {
	ls := limits(t, "1/1s")
	// MaxWait: the third request would wait 2s.
	req := quota.Request{Key: "wait", Limits: ls, MaxWait: 1500 * time.Millisecond, MaxQueue: 100}
	e.reserve(req)
	if r := e.reserve(req); !r.OK || r.Delay() != time.Second {
		t.Fatalf("second request: OK=%v delay=%v, want queued 1s", r.OK, r.Delay())
	}
	r := e.reserve(req)
	if r.OK || r.QueueFull || r.Delay() != 2*time.Second {
		t.Fatalf("third request: OK=%v queueFull=%v delay=%v, want refused with 2s", r.OK, r.QueueFull, r.Delay())
	}
	// MaxQueue: two may wait, the third waiter is refused.
	req = quota.Request{Key: "queue", Limits: ls, MaxWait: time.Hour, MaxQueue: 2}
	e.reserve(req)
	e.reserve(req)
	e.reserve(req)
	r = e.reserve(req)
	if r.OK || !r.QueueFull {
		t.Fatalf("fourth request with two waiting: OK=%v queueFull=%v, want refused as queue full", r.OK, r.QueueFull)
	}
	if r.Delay() != 3*time.Second {
		t.Fatalf("queue-full refusal says %v, want 3s", r.Delay())
	}
}

func cancelGivesTheSlotBack(t *testing.T, e *env) {
	req := quota.Request{Key: "k", Limits: limits(t, "2/1m"), MaxWait: time.Hour, MaxQueue: 10}
	a := e.book(req)
	e.reserve(req)
	e.cancel(a)
	if r := e.reserve(req); !r.OK || r.Delay() != 0 {
		t.Fatalf("after cancel: OK=%v delay=%v, want admitted now", r.OK, r.Delay())
	}
	if r := e.reserve(req); !r.OK || r.Delay() != time.Minute {
		t.Fatalf("third: OK=%v delay=%v, want queued a minute", r.OK, r.Delay())
	}
}

func cancelOfQueuedSlotNeverBreaksTheBound(t *testing.T, e *env) {
	// A cancelled future slot must not free the window it was booked
	// against: sends at 0 and 1s (N=2/10s), a queued slot at 10s cancelled
	// at 2s; a request at 2s must still wait until 10s.
	req := quota.Request{Key: "k", Limits: limits(t, "2/10s"), MaxWait: time.Hour, MaxQueue: 10}
	start := e.clock.Now()
	e.reserve(req)
	e.clock.Advance(time.Second)
	e.reserve(req)
	q := e.reserve(req)
	e.clock.Advance(time.Second)
	e.cancel(q)
	if r := e.reserve(req); r.At.Sub(start) != 10*time.Second {
		t.Fatalf("request after cancelling a queued slot booked at +%v, want +10s", r.At.Sub(start))
	}
}

func slotsKeepArrivalOrder(t *testing.T, e *env) {
	req := quota.Request{Key: "k", Limits: limits(t, "3/1s", "5/3s"), MaxWait: time.Hour, MaxQueue: 1000}
	var last time.Time
	for i := range 50 {
		r := e.reserve(req)
		if r.At.Before(last) {
			t.Fatalf("request %d booked at %v, before the previous %v", i, r.At, last)
		}
		last = r.At
		e.clock.Advance(37 * time.Millisecond)
	}
}

// anyWindowBoundUnderRandomTraffic drives random arrivals, refusals and
// cancellations and checks the guarantee on the slots that remain.
func anyWindowBoundUnderRandomTraffic(t *testing.T, e *env) {
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 1))
		ls := limits(t, "5/1s", "12/5s", "30/1m")
		req := quota.Request{Key: fmt.Sprint("k", seed), Limits: ls, MaxWait: time.Duration(rng.IntN(20)) * time.Second, MaxQueue: 1 + rng.IntN(10)}
		var kept []time.Time
		for range 2000 {
			e.clock.Advance(time.Duration(rng.ExpFloat64() * float64(200*time.Millisecond)))
			r := e.book(req)
			if !r.OK {
				if r.At.Before(r.Now) {
					t.Fatalf("seed %d: refusal with At %v before Now %v", seed, r.At, r.Now)
				}
				continue
			}
			if rng.IntN(10) == 0 {
				e.cancel(r)
				continue
			}
			// Settled at its slot; the store has planned the slots of the
			// queue against each other.
			if r.Delay() == 0 {
				e.settle(r, r.At)
			}
			kept = append(kept, r.At)
		}
		for _, l := range ls {
			checkBound(t, kept, l)
		}
	}
}

// saturationUsesTheWholeQuota: under constant demand the store books
// exactly Count slots per Window.
func saturationUsesTheWholeQuota(t *testing.T, e *env) {
	l := limits(t, "15/1s")[0]
	req := quota.Request{Key: "k", Limits: []quota.Limit{l}, MaxWait: time.Hour, MaxQueue: 1 << 20}
	start := e.clock.Now()
	booked := 0
	for {
		r := e.reserve(req)
		if !r.OK {
			t.Fatal("refused under generous bounds")
		}
		if r.At.Sub(start) >= 10*time.Second {
			break
		}
		booked++
		e.clock.Advance(time.Millisecond)
	}
	if booked != 150 {
		t.Fatalf("booked %d slots in 10 windows, want 150", booked)
	}
}

func keysAreIndependent(t *testing.T, e *env) {
	ls := limits(t, "1/1s")
	for i := range 200 {
		if r := e.reserve(quota.Request{Key: fmt.Sprint("key-", i), Limits: ls}); !r.OK {
			t.Fatalf("key %d refused: keys must not share quota", i)
		}
	}
}

func reserveWithoutKeyOrLimits(t *testing.T, e *env) {
	if _, err := e.s.Reserve(e.ctx, quota.Request{}); err != quota.ErrNoKey {
		t.Fatalf("Reserve without key: err = %v, want ErrNoKey", err)
	}
	for range 100 {
		if r := e.reserve(quota.Request{Key: "free"}); !r.OK || r.Delay() != 0 {
			t.Fatal("request without limits was delayed")
		}
	}
}

func holdDelaysEveryRequestThenOneProbeGoesFirst(t *testing.T, e *env) {
	queue := quota.Request{Key: "k", MaxWait: time.Minute, MaxQueue: 100} // no limits: holds still apply
	start := e.clock.Now()
	if err := e.s.Hold(e.ctx, "k", 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if r := e.reserve(quota.Request{Key: "k"}); r.OK || !r.Held || r.Delay() != 2*time.Second {
		t.Fatalf("reject-mode request during a hold: OK=%v held=%v delay=%v, want refused for 2s", r.OK, r.Held, r.Delay())
	}
	a, b := e.reserve(queue), e.reserve(queue)
	if a.At.Sub(start) != 2*time.Second || b.At.Sub(start) != 2*time.Second || !a.Held {
		t.Fatalf("queued during the hold: a at +%v, b at +%v, want +2s", a.At.Sub(start), b.At.Sub(start))
	}
	e.clock.Set(a.At)
	a, b = e.release(a), e.release(b)
	if a.Delay() != 0 || !a.Probe {
		t.Fatalf("first after the hold: delay %v probe %v, want the probe, now", a.Delay(), a.Probe)
	}
	if b.Delay() == 0 || b.Probe {
		t.Fatalf("second after the hold went before the probe's outcome")
	}
	// The probe is throttled again: hold anew; then it succeeds.
	e.settle(a, e.clock.Now())
	e.s.Hold(e.ctx, "k", time.Second)
	e.clock.Advance(time.Second)
	b = e.release(b)
	if b.Delay() != 0 || !b.Probe {
		t.Fatalf("after the second hold b should probe: delay %v probe %v", b.Delay(), b.Probe)
	}
	c := e.reserve(queue)
	if c.Delay() == 0 {
		t.Fatal("c went while b probes")
	}
	e.settle(b, e.clock.Now())
	e.s.EndProbe(e.ctx, b)
	e.clock.Set(c.At)
	if c = e.release(c); c.Delay() != 0 || c.Probe {
		t.Fatalf("after a good probe: delay %v probe %v, want open", c.Delay(), c.Probe)
	}
}

// waitersForAProbeAreWokenWhenItEnds: a request queued behind a probe is
// told to wait for the probe's outcome with Wake, which closes the moment
// the probe ends, not after a poll.
func waitersForAProbeAreWokenWhenItEnds(t *testing.T, e *env) {
	req := quota.Request{Key: "k", MaxWait: time.Minute, MaxQueue: 100, Scout: true}
	scout := e.reserve(req)
	if !scout.Probe {
		t.Fatal("the first request of a new key did not scout")
	}
	other := e.reserve(req)
	if !other.OK || other.Delay() == 0 || other.Wake == nil {
		t.Fatalf("request behind the scout: OK=%v delay=%v wake=%v, want queued with a Wake", other.OK, other.Delay(), other.Wake != nil)
	}
	select {
	case <-other.Wake:
		t.Fatal("Wake closed before the probe ended")
	default:
	}
	e.clock.Advance(30 * time.Millisecond)
	if err := e.s.EndProbe(e.ctx, scout); err != nil {
		t.Fatal(err)
	}
	select {
	case <-other.Wake:
	case <-time.After(5 * time.Second):
		t.Fatal("Wake not closed when the probe ended")
	}
	if other = e.release(other); other.Delay() != 0 {
		t.Fatalf("after the probe ended: delay %v, want 0", other.Delay())
	}
}

func cancelledProbeLetsAnotherProbe(t *testing.T, e *env) {
	e.s.Hold(e.ctx, "k", time.Second)
	e.clock.Advance(time.Second)
	a := e.book(quota.Request{Key: "k"})
	if !a.Probe {
		t.Fatal("no probe after the hold")
	}
	e.cancel(a)
	if b := e.reserve(quota.Request{Key: "k"}); !b.OK || !b.Probe {
		t.Fatalf("after the probe was cancelled: OK=%v probe=%v", b.OK, b.Probe)
	}
}

func learnedWindowsTightenOrReplace(t *testing.T, e *env) {
	req := quota.Request{Key: "k", Limits: limits(t, "100/1s")}
	e.s.Observe(e.ctx, "k", quota.Observation{Remaining: -1, Limits: limits(t, "2/1s"), KeepFor: time.Minute})
	e.reserve(req)
	e.reserve(req)
	if r := e.reserve(req); r.OK {
		t.Fatal("learned 2/1s did not tighten the configured 100/1s")
	}
	e.clock.Advance(2 * time.Minute) // learned windows expire
	for i := range 5 {
		if r := e.reserve(req); !r.OK {
			t.Fatalf("request %d refused after the learned window expired", i)
		}
	}
	e.s.Observe(e.ctx, "r", quota.Observation{Remaining: -1, Limits: limits(t, "50/1s"), Replace: true, KeepFor: time.Minute})
	for i := range 50 {
		if r := e.reserve(quota.Request{Key: "r", Limits: limits(t, "1/1s")}); !r.OK {
			t.Fatalf("replace mode: request %d refused; the learned 50/1s should replace 1/1s", i)
		}
	}
}

// concurrentReservationsKeepTheBound runs many goroutines on one key and
// on many keys, for the race detector and the bound.
func concurrentReservationsKeepTheBound(t *testing.T, e *env) {
	ls := limits(t, "10/1s", "25/5s")
	var mu sync.Mutex
	var times []time.Time
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100 {
				r, err := e.s.Reserve(e.ctx, quota.Request{Key: "shared", Limits: ls, MaxWait: time.Hour, MaxQueue: 1 << 20})
				if err != nil || !r.OK {
					errs <- fmt.Errorf("reserve: %v %v", r.OK, err)
					return
				}
				if i%7 == 0 {
					if err := e.s.Cancel(e.ctx, r); err != nil {
						errs <- err
						return
					}
				} else {
					mu.Lock()
					times = append(times, r.At)
					mu.Unlock()
					if r.Delay() == 0 {
						e.s.Settle(e.ctx, r, r.At)
					}
				}
				e.s.Reserve(e.ctx, quota.Request{Key: fmt.Sprint(g, "-", i), Limits: ls})
				if g == 0 {
					e.clock.Advance(3 * time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, l := range ls {
		checkBound(t, times, l)
	}
}

func releaseWaitsForALateSendTime(t *testing.T, e *env) {
	req := quota.Request{Key: "k", Limits: limits(t, "1/1s"), MaxWait: time.Hour, MaxQueue: 10}
	start := e.clock.Now()
	a := e.book(req)
	b := e.book(req)
	if b.At.Sub(start) != time.Second {
		t.Fatalf("b booked at +%v, want +1s", b.At.Sub(start))
	}
	// a needed a new connection: it left 300ms after its slot.
	e.clock.Advance(300 * time.Millisecond)
	e.settle(a, e.clock.Now())
	e.clock.Set(b.At)
	b = e.release(b)
	if got := b.At.Sub(start); got != 1300*time.Millisecond || b.Delay() != 300*time.Millisecond {
		t.Fatalf("released b: at +%v delay %v, want moved to +1.3s", got, b.Delay())
	}
	e.clock.Set(b.At)
	if b = e.release(b); b.Delay() != 0 {
		t.Fatalf("b at its moved slot: delay %v, want 0", b.Delay())
	}
}

// earlyReleaseKeepsTheSlot: a waiter woken early (Wake) calls Release
// before its slot; with other requests queued ahead of it, the slot stays.
func earlyReleaseKeepsTheSlot(t *testing.T, e *env) {
	req := quota.Request{Key: "k", Limits: limits(t, "1/1s"), MaxWait: time.Hour, MaxQueue: 10}
	start := e.clock.Now()
	e.reserve(req)
	e.book(req) // queued at +1s
	c := e.book(req)
	e.clock.Advance(500 * time.Millisecond)
	if c = e.release(c); c.At.Sub(start) != 2*time.Second {
		t.Fatalf("released early: at +%v, want its slot, +2s", c.At.Sub(start))
	}
}

func unsettledRequestCountsAsSentNow(t *testing.T, e *env) {
	req := quota.Request{Key: "k", Limits: limits(t, "1/1s"), MaxWait: time.Hour, MaxQueue: 10}
	start := e.clock.Now()
	a := e.book(req) // released at 0, never settled yet
	b := e.reserve(req)
	e.clock.Set(b.At) // +1s: a may still be on its way
	b = e.release(b)
	if got := b.At.Sub(start); got != 2*time.Second {
		t.Fatalf("b with a unsettled: moved to +%v, want +2s", got)
	}
	e.clock.Advance(200 * time.Millisecond)
	e.settle(a, e.clock.Now()) // a left at +1.2s
	e.clock.Set(b.At)
	b = e.release(b)
	if got := b.At.Sub(start); got != 2200*time.Millisecond {
		t.Fatalf("b after a settled at +1.2s: at +%v, want +2.2s", got)
	}
}

// settledAgainLaterCountsFromTheLaterTime: net/http writes a request a
// second time when the reused connection it first went on was closed; the
// upstream counts the later write, and so must the store.
func settledAgainLaterCountsFromTheLaterTime(t *testing.T, e *env) {
	req := quota.Request{Key: "k", Limits: limits(t, "1/1s"), MaxWait: time.Hour, MaxQueue: 10}
	start := e.clock.Now()
	a := e.settle(e.book(req), start)
	e.clock.Advance(400 * time.Millisecond)
	a = e.settle(a, e.clock.Now()) // written again at +400ms
	if got := a.Sent.Sub(start); got != 400*time.Millisecond {
		t.Fatalf("Sent after the second settle: +%v, want +400ms", got)
	}
	e.settle(a, start) // an earlier time never moves it back
	b := e.book(req)
	if got := b.At.Sub(start); got != 1400*time.Millisecond {
		t.Fatalf("next slot at +%v, want +1.4s: one second after the later write", got)
	}
}

// simulatedClientsNeverExceedOnSendTimes runs closed-loop clients on the
// fake clock: each request is written upstream after a random delay (a new
// connection, a slow scheduler), some give up while queued. The bound must
// hold on the times requests were actually sent.
func simulatedClientsNeverExceedOnSendTimes(t *testing.T, e *env) {
	for seed := range uint64(10) {
		rng := rand.New(rand.NewPCG(seed, 7))
		ls := limits(t, "10/1s", "25/5s")
		req := quota.Request{Key: fmt.Sprint("k", seed), Limits: ls, MaxWait: time.Hour, MaxQueue: 1000}
		start := e.clock.Now()
		type event struct {
			at time.Time
			do func()
		}
		var events []event
		schedule := func(at time.Time, do func()) { events = append(events, event{at, do}) }
		var sends []time.Time
		var request func()
		var wait func(r quota.Reservation)
		send := func(r quota.Reservation) {
			delay := time.Duration(rng.ExpFloat64() * float64(20*time.Millisecond))
			if rng.IntN(20) == 0 {
				delay += 400 * time.Millisecond
			}
			schedule(e.clock.Now().Add(delay), func() {
				sends = append(sends, e.clock.Now())
				e.settle(r, e.clock.Now())
				schedule(e.clock.Now().Add(5*time.Millisecond), request)
			})
		}
		wait = func(r quota.Reservation) {
			if r.Delay() == 0 {
				send(r)
				return
			}
			if rng.IntN(25) == 0 { // the client gives up while queued
				schedule(e.clock.Now().Add(r.Delay()/2), func() {
					e.cancel(r)
					schedule(e.clock.Now().Add(time.Millisecond), request)
				})
				return
			}
			schedule(r.At, func() { wait(e.release(r)) })
		}
		request = func() {
			r := e.book(req)
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
			if ev.at.After(e.clock.Now()) {
				e.clock.Set(ev.at)
			}
			ev.do()
		}
		for _, l := range ls {
			checkBound(t, sends, l)
		}
		// 25 per 5s binds: 150 in 30s at best; slow sends cost some.
		if len(sends) < 120 {
			t.Errorf("seed %d: only %d sends in 30s, want >= 120 of the 150 allowed", seed, len(sends))
		}
		e.clock.Set(end.Add(time.Minute))
	}
}

func scoutGoesAloneUntilTheUpstreamHasSpoken(t *testing.T, e *env) {
	req := quota.Request{Key: "k", Limits: limits(t, "100/1s"), MaxWait: time.Minute, MaxQueue: 100, Scout: true}
	scout := e.reserve(req)
	if scout.Delay() != 0 || !scout.Probe {
		t.Fatalf("first request of a new key: delay %v probe %v, want the scout", scout.Delay(), scout.Probe)
	}
	other := e.reserve(req)
	if other.Delay() == 0 {
		t.Fatal("a second request went before the scout's answer")
	}
	e.s.Observe(e.ctx, "k", quota.Observation{SentAt: e.clock.Now(), Remaining: 3, ResetAt: e.clock.Now().Add(time.Second)})
	e.s.EndProbe(e.ctx, scout)
	if other = e.release(other); other.Delay() != 0 {
		t.Fatalf("after the scout's answer: delay %v", other.Delay())
	}
	e.settle(other, e.clock.Now())
	e.reserve(req)
	e.reserve(req) // the budget of 3 is spent (other + these two)
	if r := e.reserve(req); !r.Held {
		t.Fatal("the reported budget was not enforced")
	}
	// At the reset the store knows nothing again: scout anew.
	e.clock.Advance(time.Second)
	a, b := e.reserve(req), e.reserve(req)
	if a.Delay() != 0 || !a.Probe || b.Delay() == 0 {
		t.Fatalf("after the reset: a delay %v probe %v, b delay %v; want a to scout alone", a.Delay(), a.Probe, b.Delay())
	}
	// A key whose upstream reports nothing scouts once.
	n := quota.Request{Key: "quiet", Limits: limits(t, "100/1s"), Scout: true}
	q := e.reserve(n)
	e.s.EndProbe(e.ctx, q)
	for i := range 10 {
		if r := e.reserve(n); r.Delay() != 0 || r.Probe {
			t.Fatalf("request %d of a quiet key after its scout: delay %v probe %v", i, r.Delay(), r.Probe)
		}
	}
}

// inFlightRequestBlocksImmediateAdmissionAndIsNotPruned: a request released
// but still being written counts as sent now, for as long as it takes.
func inFlightRequestBlocksImmediateAdmissionAndIsNotPruned(t *testing.T, e *env) {
	req := quota.Request{Key: "k", Limits: limits(t, "1/1s")}
	a := e.book(req) // released at 0, its TLS handshake is slow
	e.clock.Advance(time.Second)
	if b := e.book(req); b.OK {
		t.Fatal("b admitted at +1s while a, released at 0, was still on its way")
	}
	e.clock.Advance(time.Second) // +2s: a's slot is older than the window
	if b := e.book(req); b.OK {
		t.Fatal("b admitted at +2s: a's unsettled entry was pruned")
	}
	e.settle(a, e.clock.Now()) // a written at +2s
	e.clock.Advance(999 * time.Millisecond)
	if b := e.book(req); b.OK {
		t.Fatal("b admitted within a second of a's real send time")
	}
	e.clock.Advance(time.Millisecond)
	if b := e.book(req); !b.OK {
		t.Fatal("b refused a full second after a was sent")
	}
}

// changedLimitsAreJudgedAgainstRecordedSends: limits come with each
// request (a reload changes them); a key's history stays and is read
// against the new limits.
func changedLimitsAreJudgedAgainstRecordedSends(t *testing.T, e *env) {
	old := quota.Request{Key: "k", Limits: limits(t, "10/1m")}
	for range 6 {
		e.reserve(old)
		e.clock.Advance(time.Second)
	}
	lower := quota.Request{Key: "k", Limits: limits(t, "5/1m")}
	if r := e.reserve(lower); r.OK {
		t.Fatal("after lowering 10/1m to 5/1m, a key with 6 sends in the minute was admitted")
	}
	higher := quota.Request{Key: "k", Limits: limits(t, "8/1m")}
	for i := range 2 {
		if r := e.reserve(higher); !r.OK {
			t.Fatalf("8/1m with 6+%d sends: refused", i)
		}
	}
	if r := e.reserve(higher); r.OK {
		t.Fatal("8/1m admitted a ninth send in the minute")
	}
}

// largeLimitsKeepTheBoundAndLoseAtMostOneSlot: a limit above ExactCount is
// counted in buckets: never more than N in any window, and under
// saturation at most 1/BucketSlots of N unused.
func largeLimitsKeepTheBoundAndLoseAtMostOneSlot(t *testing.T, e *env) {
	l := quota.Limit{Count: 10000, Window: 100 * time.Second}
	small := limits(t, "200/1s")
	req := quota.Request{Key: "big", Limits: append(small, l), MaxWait: time.Hour, MaxQueue: 1 << 20}
	rng := rand.New(rand.NewPCG(3, 3))
	var sends []time.Time
	start := e.clock.Now()
	for e.clock.Now().Sub(start) < 300*time.Second {
		r := e.book(req)
		if !r.OK {
			t.Fatal("refused under generous bounds")
		}
		for r.Delay() != 0 {
			e.clock.Set(r.At)
			r = e.release(r)
		}
		at := e.clock.Now().Add(time.Duration(rng.IntN(3)) * time.Millisecond)
		e.clock.Set(at)
		e.settle(r, at)
		sends = append(sends, at)
	}
	checkBound(t, sends, l)
	checkBound(t, sends, small[0])
	// Three windows under saturation: at most one slot of each unused.
	if min := 3 * l.Count * (quota.BucketSlots - 1) / quota.BucketSlots; len(sends) < min {
		t.Errorf("%d sends in three windows of %v, want >= %d", len(sends), l, min)
	}
	t.Logf("%d sends in three windows of %v", len(sends), l)
}

// refusalsBookSuccessiveSlotsForTheirRetries: with Book, refused requests
// are told successive whole-second times, as if they had queued, and a
// retry at its time is admitted.
func refusalsBookSuccessiveSlotsForTheirRetries(t *testing.T, e *env) {
	book := quota.Booking{Round: time.Second, Grace: time.Second}
	req := quota.Request{Key: "k", Limits: limits(t, "2/1500ms"), MaxQueue: 10, Book: book}
	start := e.clock.Now()
	e.reserve(req)
	e.reserve(req)
	var told []time.Duration
	for range 4 {
		r := e.reserve(req)
		if r.OK || !r.Booked {
			t.Fatalf("refusal: OK=%v booked=%v, want a booking", r.OK, r.Booked)
		}
		told = append(told, r.At.Sub(start))
	}
	// Slots at 1.5s (twice), then 3.5s... rounded up to whole seconds.
	if want := []time.Duration{2 * time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second}; !slices.Equal(told, want) {
		t.Fatalf("told %v, want %v", told, want)
	}
	e.clock.Advance(2*time.Second + 30*time.Millisecond) // the two retries, a little late
	for i := range 2 {
		if r := e.reserve(req); !r.OK || r.Delay() != 0 {
			t.Fatalf("retry %d at its time: OK=%v delay=%v", i, r.OK, r.Delay())
		}
	}
	// A third caller now finds the next slots booked: told the time after.
	// (The slot is at +5.5s; Retry-After counts whole seconds from now.)
	if r := e.reserve(req); r.OK || !r.Booked || r.Delay() != 4*time.Second {
		t.Fatalf("third caller: OK=%v booked=%v told %v, want a booking 4s away", r.OK, r.Booked, r.Delay())
	}
}

func bookingsLapseAndCountAgainstMaxQueue(t *testing.T, e *env) {
	book := quota.Booking{Round: time.Second, Grace: 500 * time.Millisecond}
	req := quota.Request{Key: "k", Limits: limits(t, "1/1s"), MaxQueue: 2, Book: book}
	start := e.clock.Now()
	e.reserve(req)
	e.reserve(req) // booked at 1s
	e.reserve(req) // booked at 2s
	if r := e.reserve(req); r.OK || r.Booked || !r.QueueFull {
		t.Fatalf("third refusal with two bookings: OK=%v booked=%v queueFull=%v, want queue full", r.OK, r.Booked, r.QueueFull)
	}
	// Nobody comes back: the bookings lapse after their grace, and the
	// quota is free again.
	e.clock.Advance(2*time.Second + 500*time.Millisecond)
	if r := e.reserve(req); !r.OK || r.Delay() != 0 {
		t.Fatalf("after the bookings lapsed (+%v): OK=%v delay=%v", e.clock.Now().Sub(start), r.OK, r.Delay())
	}
}

func earlyRetryWaitsForItsBooking(t *testing.T, e *env) {
	book := quota.Booking{Round: time.Second, Grace: time.Second, Early: 200 * time.Millisecond}
	req := quota.Request{Key: "k", Limits: limits(t, "1/1s"), MaxQueue: 5, Book: book}
	start := e.clock.Now()
	e.reserve(req)
	if r := e.reserve(req); !r.Booked || r.At.Sub(start) != time.Second {
		t.Fatalf("refusal: booked %v at +%v, want +1s", r.Booked, r.At.Sub(start))
	}
	e.clock.Advance(900 * time.Millisecond) // 100ms early
	r := e.book(req)
	if !r.OK || r.Delay() != 100*time.Millisecond {
		t.Fatalf("early retry: OK=%v delay=%v, want its booking in 100ms", r.OK, r.Delay())
	}
	e.clock.Set(r.At)
	if r = e.release(r); r.Delay() != 0 {
		t.Fatalf("at its booking: delay %v", r.Delay())
	}
}

// soleCallerGetsTheWholeReportedQuota: when the upstream has counted no
// more than the store sent in its window, nobody else spends the key: the
// budget is the whole count, with no reserve, and requests the upstream
// already counted are not subtracted again.
func soleCallerGetsTheWholeReportedQuota(t *testing.T, e *env) {
	req := quota.Request{Key: "k", Limits: limits(t, "10/10s"), MaxWait: time.Minute, MaxQueue: 100}
	window := 10 * time.Second
	reset := e.clock.Now().Add(window)
	var sentAt []time.Time
	for range 3 {
		e.reserve(req)
		sentAt = append(sentAt, e.clock.Now())
		e.clock.Advance(time.Millisecond)
	}
	// The answer to the first: the upstream counted it and the second (it
	// arrived first), not the third.
	e.s.Observe(e.ctx, "k", quota.Observation{SentAt: sentAt[0], Limit: 10, Remaining: 8, ResetAt: reset, Period: window, Reserve: 0.05})
	for i := range 7 { // 10 - 3 sent, no reserve
		if r := e.reserve(req); !r.OK || r.Delay() != 0 {
			t.Fatalf("send %d of the whole quota: OK=%v delay=%v held=%v", 4+i, r.OK, r.Delay(), r.Held)
		}
	}
	if r := e.reserve(req); r.Delay() == 0 {
		t.Fatal("an eleventh send in the upstream's window")
	}
}

// soleCallerIsNotHeldPastItsOwnWindow: upstreams report their reset in
// whole seconds, up to a second late. When the key has the upstream to
// itself and the upstream's window is a learned limit (held exactly), a
// spent budget does not hold the key until that reset: the limit decides.
func soleCallerIsNotHeldPastItsOwnWindow(t *testing.T, e *env) {
	window := 10 * time.Second
	learned := []quota.Limit{{Count: 10, Window: window}}
	req := quota.Request{Key: "k", MaxWait: time.Minute, MaxQueue: 100}
	start := e.clock.Now()
	e.reserve(req)
	e.s.Observe(e.ctx, "k", quota.Observation{SentAt: start, Limit: 10, Remaining: 9, ResetAt: start.Add(window + 900*time.Millisecond), Period: window, Limits: learned, KeepFor: time.Minute})
	for range 9 {
		e.reserve(req)
	}
	r := e.reserve(req)
	if r.Held || r.At.Sub(start) != window {
		t.Fatalf("eleventh request: held %v at +%v, want the learned limit's slot at +%v, not the late reset", r.Held, r.At.Sub(start), window)
	}
}

// sendsArrivingLateStillCountAsOurs: the upstream counts arrivals, which
// lag the sends by up to Observation.Delay; sends made that long before
// its window began are still ours, not another caller's.
func sendsArrivingLateStillCountAsOurs(t *testing.T, e *env) {
	window := 10 * time.Second
	learned := []quota.Limit{{Count: 10, Window: window + 100*time.Millisecond}}
	req := quota.Request{Key: "k", MaxWait: time.Minute, MaxQueue: 100}
	start := e.clock.Now()
	for range 4 {
		e.reserve(req) // sent at 0, arriving up to 100ms later
	}
	e.clock.Advance(5 * time.Second)
	sentAt := e.clock.Now()
	e.reserve(req)
	// A sliding window that began as the four arrived (+1.05s, reset
	// rounding included: the first second of slack is used up).
	e.s.Observe(e.ctx, "k", quota.Observation{SentAt: sentAt, Limit: 10, Remaining: 5, ResetAt: start.Add(11*time.Second + 50*time.Millisecond), Period: window, Delay: 100 * time.Millisecond, Limits: learned, KeepFor: time.Minute, Reserve: 0.5})
	// No other caller: all ten are ours; with one evident, the reserve
	// of 5 would leave nothing.
	for i := range 5 {
		if r := e.reserve(req); !r.OK || r.Delay() != 0 {
			t.Fatalf("send %d of the quota: OK=%v delay=%v held=%v", 6+i, r.OK, r.Delay(), r.Held)
		}
	}
}

// otherCallerLeavesAReserveAndNothingIsCountedTwice: the upstream has
// counted more than the store sent, so another caller spends the key: the
// budget is what is left less the sends it had not counted yet, less the
// reserve.
func otherCallerLeavesAReserveAndNothingIsCountedTwice(t *testing.T, e *env) {
	req := quota.Request{Key: "k", Limits: limits(t, "100/10s"), MaxWait: time.Minute, MaxQueue: 100}
	window := 10 * time.Second
	reset := e.clock.Now().Add(window)
	e.reserve(req) // the request whose answer comes back
	sentAt := e.clock.Now()
	e.clock.Advance(time.Millisecond)
	e.reserve(req)                         // sent after it: not counted yet, as far as the store can tell
	e.book(req)                            // on its way
	e.clock.Advance(10 * time.Millisecond) // the answer to the first
	// 30 used: 3 of ours at most, so another caller spent the rest.
	e.s.Observe(e.ctx, "k", quota.Observation{SentAt: sentAt, Limit: 40, Remaining: 10, ResetAt: reset, Period: window, Reserve: 0.05})
	// Left 10, less the 2 sent after the first (not yet counted), less 2
	// (5% of 40): 6.
	for i := range 6 {
		if r := e.reserve(req); !r.OK || r.Delay() != 0 {
			t.Fatalf("send %d within the shared budget: OK=%v delay=%v", i, r.OK, r.Delay())
		}
	}
	if r := e.reserve(req); !r.Held {
		t.Fatal("the shared budget was not enforced")
	}
}

// reportWithoutItsWindowKeepsTheReserve: when the upstream does not say
// how long its window is, the store cannot count its own sends in it, so it
// cannot rule out another caller.
func reportWithoutItsWindowKeepsTheReserve(t *testing.T, e *env) {
	req := quota.Request{Key: "k", Limits: limits(t, "100/10s"), MaxWait: time.Minute, MaxQueue: 100}
	e.reserve(req)
	sentAt := e.clock.Now()
	e.s.Observe(e.ctx, "k", quota.Observation{SentAt: sentAt, Limit: 20, Remaining: 19, ResetAt: e.clock.Now().Add(5 * time.Second), Reserve: 0.1})
	for i := range 17 { // 19 left less 2 (10% of 20)
		if r := e.reserve(req); !r.OK || r.Delay() != 0 {
			t.Fatalf("send %d: OK=%v delay=%v", i, r.OK, r.Delay())
		}
	}
	if r := e.reserve(req); !r.Held {
		t.Fatal("the budget did not keep the reserve")
	}
}

// refusalWhileTheBudgetIsSpentNamesTheReset: a request refused because
// the upstream's reported quota is spent is told the upstream's reset, not
// an arbitrary short wait.
func refusalWhileTheBudgetIsSpentNamesTheReset(t *testing.T, e *env) {
	req := quota.Request{Key: "k", Limits: limits(t, "100/10s"), MaxQueue: 10, Book: quota.Booking{Round: time.Second, Grace: time.Second}}
	e.reserve(req)
	reset := e.clock.Now().Add(7 * time.Second)
	// Another caller spent the rest: nothing left.
	e.s.Observe(e.ctx, "k", quota.Observation{SentAt: e.clock.Now(), Limit: 20, Remaining: 0, ResetAt: reset, Period: 10 * time.Second})
	r := e.reserve(req)
	if r.OK || !r.Held || !r.At.Equal(reset) {
		t.Fatalf("refusal with the budget spent: OK=%v held=%v at +%v, want held until the reset at +7s", r.OK, r.Held, r.At.Sub(e.clock.Now()))
	}
}

func inspectDescribesAKey(t *testing.T, e *env) {
	in, ok := e.s.(quota.Inspector)
	if !ok {
		t.Skip("the store does not implement quota.Inspector")
	}
	ls := limits(t, "3/1s", "10/1m")
	if st, err := in.Inspect(e.ctx, "k", ls); err != nil || len(st.Limits) != 2 || st.Limits[0].Used != 0 || !st.Limits[0].NextFree.Equal(e.clock.Now()) || !st.BudgetUntil.IsZero() {
		t.Fatalf("unknown key: %+v %v", st, err)
	}
	for range 3 {
		e.reserve(quota.Request{Key: "k", Limits: ls})
	}
	queued := e.reserve(quota.Request{Key: "k", Limits: ls, MaxWait: 5 * time.Second, MaxQueue: 10})
	if !queued.OK || queued.Delay() == 0 {
		t.Fatalf("fourth request: %+v, want queued", queued)
	}
	refused := e.reserve(quota.Request{Key: "k", Limits: ls, MaxQueue: 10, Book: quota.Booking{Round: time.Second, Grace: time.Second}})
	if !refused.Booked {
		t.Fatalf("fifth request: %+v, want a booked refusal", refused)
	}
	e.s.Hold(e.ctx, "k", 2*time.Second)
	st, err := in.Inspect(e.ctx, "k", ls)
	if err != nil {
		t.Fatal(err)
	}
	if st.Limits[0].Used != 3 || st.Limits[1].Used != 3 || st.Queued != 1 || st.Booked != 1 || st.InFlight != 0 {
		t.Errorf("used %d/%d queued %d booked %d in flight %d, want 3/3, 1, 1, 0", st.Limits[0].Used, st.Limits[1].Used, st.Queued, st.Booked, st.InFlight)
	}
	if want := e.clock.Now().Add(2 * time.Second); !st.Limits[0].NextFree.Equal(e.clock.Now().Add(time.Second)) || !st.HoldUntil.Equal(want) || !st.Probing {
		t.Errorf("next free %v hold until %v probing %v", st.Limits[0].NextFree.Sub(e.clock.Now()), st.HoldUntil.Sub(e.clock.Now()), st.Probing)
	}
}
