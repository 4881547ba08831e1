package fallback_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota/fallback"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota/storetest"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

var errDown = errors.New("dial tcp 127.0.0.1:6379: connect: connection refused")

// shared is a shared store that works (a memory store) until told to fail,
// and records what it is asked.
type shared struct {
	*quota.MemoryStore
	down     atomic.Bool
	calls    atomic.Int64 // calls that reached it
	mu       sync.Mutex
	recorded map[string][]time.Time
	limits   map[string][]quota.Limit
	holds    map[string]time.Duration
	barrier  *sync.WaitGroup
	slow     chan struct{} // a Reserve of key "slow" says so on entered, then waits for it
	entered  chan struct{}
}

func newShared(clock quota.Clock) *shared {
	return &shared{MemoryStore: quota.NewMemoryStore(clock), recorded: map[string][]time.Time{},
		limits: map[string][]quota.Limit{}, holds: map[string]time.Duration{}}
}

func (s *shared) err() error {
	s.calls.Add(1)
	if s.down.Load() {
		return errDown
	}
	return nil
}

func (s *shared) Reserve(ctx context.Context, req quota.Request) (quota.Reservation, error) {
	if req.Key == "slow" && s.slow != nil {
		s.entered <- struct{}{}
		<-s.slow
	}
	if s.barrier != nil {
		s.barrier.Done()
		s.barrier.Wait() // every caller is inside before any fails
	}
	if err := s.err(); err != nil {
		return quota.Reservation{}, err
	}
	return s.MemoryStore.Reserve(ctx, req)
}

func (s *shared) Release(ctx context.Context, r quota.Reservation) (quota.Reservation, error) {
	if err := s.err(); err != nil {
		return r, err
	}
	return s.MemoryStore.Release(ctx, r)
}

func (s *shared) Hold(ctx context.Context, key string, d time.Duration) error {
	if err := s.err(); err != nil {
		return err
	}
	s.mu.Lock()
	s.holds[key] = d
	s.mu.Unlock()
	return s.MemoryStore.Hold(ctx, key, d)
}

func (s *shared) Observe(ctx context.Context, key string, o quota.Observation) error {
	if err := s.err(); err != nil {
		return err
	}
	return s.MemoryStore.Observe(ctx, key, o)
}

func (s *shared) Cancel(ctx context.Context, r quota.Reservation) error {
	if err := s.err(); err != nil {
		return err
	}
	return s.MemoryStore.Cancel(ctx, r)
}

func (s *shared) EndProbe(ctx context.Context, r quota.Reservation) error {
	if err := s.err(); err != nil {
		return err
	}
	return s.MemoryStore.EndProbe(ctx, r)
}

func (s *shared) Inspect(ctx context.Context, key string, limits []quota.Limit) (quota.KeyState, error) {
	if err := s.err(); err != nil {
		return quota.KeyState{}, err
	}
	return s.MemoryStore.Inspect(ctx, key, limits)
}

func (s *shared) Ping(context.Context) error { return s.err() }

func (s *shared) Record(key string, limits []quota.Limit, sent []time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recorded[key] = append(s.recorded[key], sent...)
	s.limits[key] = limits
	return nil
}

// TestLocalFallbackIsAConformingStore: with the shared store down from the
// start, Local mode decides alone and keeps the whole contract.
func TestLocalFallbackIsAConformingStore(t *testing.T) {
	storetest.Run(t, func(t *testing.T, clock quota.Clock) quota.Store {
		sh := newShared(clock)
		sh.down.Store(true)
		s := fallback.New(sh, fallback.Options{Mode: fallback.Local, Clock: clock})
		t.Cleanup(s.Close)
		return s
	})
}

func observed() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zap.InfoLevel)
	return zap.New(core), logs
}

// waitUp waits (bounded) until the probe found the shared store back.
func waitUp(t *testing.T, s *fallback.Store) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for s.Down() {
		if time.Now().After(deadline) {
			t.Fatal("the store did not come back within 5s of the shared store")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestLocalModeSplitsEveryLimitAcrossReplicasAndReplaysWhenBack(t *testing.T) {
	ctx := context.Background()
	log, logs := observed()
	sh := newShared(nil)
	s := fallback.New(sh, fallback.Options{Mode: fallback.Local, Replicas: 3, ProbeEvery: 10 * time.Millisecond, Log: log})
	defer s.Close()
	limits := []quota.Limit{{Count: 9, Window: time.Hour}}
	req := quota.Request{Key: "k", Limits: limits}

	r, err := s.Reserve(ctx, req)
	if err != nil || !r.OK {
		t.Fatalf("with the shared store up: %+v %v", r, err)
	}
	s.Settle(ctx, r, time.Now())

	sh.down.Store(true)
	admitted := 0
	var refused quota.Reservation
	for range 10 {
		r, err := s.Reserve(ctx, req)
		if err != nil {
			t.Fatalf("Reserve while the shared store is down: %v (want a local decision)", err)
		}
		if !r.OK {
			refused = r
			continue
		}
		admitted++
		if _, err := s.Settle(ctx, r, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if admitted != 3 {
		t.Errorf("admitted %d while down, want 3 (9/1h over 3 replicas)", admitted)
	}
	if refused.Binding != limits[0] {
		t.Errorf("refusal names %v, want the key's own limit %v", refused.Binding, limits[0])
	}
	before := sh.calls.Load()
	for range 5 {
		s.Reserve(ctx, req)
	}
	if n := sh.calls.Load() - before; n > 1 { // the probe may run once meanwhile
		t.Errorf("%d calls reached the shared store while it was down: each request would wait for it", n)
	}
	if n := len(logs.FilterMessage("quota store unavailable: deciding without it until it answers again").All()); n != 1 {
		t.Errorf("the failure was logged %d times, want once", n)
	}

	sh.down.Store(false)
	waitUp(t, s)
	sh.mu.Lock()
	got, gotLimits := len(sh.recorded["k"]), sh.limits["k"]
	sh.mu.Unlock()
	if got != 3 || len(gotLimits) != 1 || gotLimits[0] != limits[0] {
		t.Errorf("replayed %d sends under %v, want the 3 local sends under the key's own limits", got, gotLimits)
	}
	if n := len(logs.FilterMessage("quota store back: deciding with it again").All()); n != 1 {
		t.Errorf("the recovery was logged %d times, want once", n)
	}
	before = sh.calls.Load()
	if _, err := s.Reserve(ctx, req); err != nil || sh.calls.Load() == before {
		t.Errorf("after recovery Reserve did not go to the shared store (err %v)", err)
	}
}

// TestAFailureSeenByManyCallsIsLoggedOnce: requests that fail together
// make one log line, not one each.
func TestAFailureSeenByManyCallsIsLoggedOnce(t *testing.T) {
	log, logs := observed()
	sh := newShared(nil)
	sh.down.Store(true)
	const callers = 8
	sh.barrier = &sync.WaitGroup{}
	sh.barrier.Add(callers)
	s := fallback.New(sh, fallback.Options{Mode: fallback.Local, Log: log})
	defer s.Close()
	var wg sync.WaitGroup
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.Reserve(context.Background(), quota.Request{Key: "k"})
		}()
	}
	wg.Wait()
	if n := len(logs.FilterMessage("quota store unavailable: deciding without it until it answers again").All()); n != 1 {
		t.Errorf("%d simultaneous failures were logged %d times, want once", callers, n)
	}
}

// TestACallFromBeforeTheRecoveryDoesNotTakeTheStoreDownAgain: a call that
// waited out the outage and fails just after the store came back is
// decided without the store, but one outage stays one failure and one
// recovery (a flap seen under CLIENT PAUSE on a loaded machine).
func TestACallFromBeforeTheRecoveryDoesNotTakeTheStoreDownAgain(t *testing.T) {
	log, logs := observed()
	sh := newShared(nil)
	sh.slow, sh.entered = make(chan struct{}), make(chan struct{})
	s := fallback.New(sh, fallback.Options{Mode: fallback.Local, Log: log, ProbeEvery: 5 * time.Millisecond})
	defer s.Close()
	slowDone := make(chan error, 1)
	go func() {
		_, err := s.Reserve(context.Background(), quota.Request{Key: "slow"})
		slowDone <- err
	}()
	<-sh.entered // the slow call is inside the shared store
	sh.down.Store(true)
	s.Reserve(context.Background(), quota.Request{Key: "other"}) // fails: down
	if !s.Down() {
		t.Fatal("the failure did not take the store down")
	}
	sh.down.Store(false)
	waitUp(t, s)
	sh.down.Store(true) // the slow call fails after the recovery
	close(sh.slow)
	if err := <-slowDone; err != nil {
		t.Fatalf("the slow call: %v, want it decided without the store", err)
	}
	if s.Down() {
		t.Error("a call from before the recovery took the store down again")
	}
	failures := len(logs.FilterMessage("quota store unavailable: deciding without it until it answers again").All())
	recoveries := len(logs.FilterMessage("quota store back: deciding with it again").All())
	if failures != 1 || recoveries != 1 {
		t.Errorf("failure logged %d times, recovery %d times; want once each", failures, recoveries)
	}
	sh.down.Store(false)
}

func TestRejectModeAnswersUnavailableWithRetryAfter(t *testing.T) {
	sh := newShared(nil)
	sh.down.Store(true)
	s := fallback.New(sh, fallback.Options{Mode: fallback.Reject, RetryAfter: 2 * time.Second})
	defer s.Close()
	_, err := s.Reserve(context.Background(), quota.Request{Key: "k", Limits: []quota.Limit{{Count: 1, Window: time.Second}}})
	var u *fallback.Unavailable
	if !errors.As(err, &u) || u.RetryAfter != 2*time.Second || !errors.Is(err, errDown) {
		t.Fatalf("Reserve in reject mode: %v, want Unavailable with RetryAfter 2s wrapping the store's error", err)
	}
}

func TestAllowModeAdmitsEveryRequestUncounted(t *testing.T) {
	ctx := context.Background()
	sh := newShared(nil)
	sh.down.Store(true)
	s := fallback.New(sh, fallback.Options{Mode: fallback.Allow})
	defer s.Close()
	for i := range 20 {
		r, err := s.Reserve(ctx, quota.Request{Key: "k", Limits: []quota.Limit{{Count: 1, Window: time.Hour}}})
		if err != nil || !r.OK || r.Delay() != 0 {
			t.Fatalf("request %d in allow mode: %+v %v", i, r, err)
		}
		if _, err := s.Settle(ctx, r, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
}

// TestHoldsMadeWhileDownReachTheSharedStore: a throttle seen during the
// fallback holds the key on every replica once the shared store is back.
func TestHoldsMadeWhileDownReachTheSharedStore(t *testing.T) {
	sh := newShared(nil)
	sh.down.Store(true)
	s := fallback.New(sh, fallback.Options{Mode: fallback.Local, ProbeEvery: 10 * time.Millisecond})
	defer s.Close()
	s.Reserve(context.Background(), quota.Request{Key: "k"}) // goes down
	if err := s.Hold(context.Background(), "k", time.Minute); err != nil {
		t.Fatal(err)
	}
	if r, _ := s.Reserve(context.Background(), quota.Request{Key: "k"}); r.OK {
		t.Error("the local store did not keep the hold")
	}
	sh.down.Store(false)
	waitUp(t, s)
	sh.mu.Lock()
	d := sh.holds["k"]
	sh.mu.Unlock()
	if d < 55*time.Second || d > time.Minute {
		t.Errorf("the shared store got a hold of %v, want the minute that was left", d)
	}
}

func TestAClientLeavingIsNotAStoreFailure(t *testing.T) {
	sh := newShared(nil)
	s := fallback.New(sh, fallback.Options{Mode: fallback.Local})
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	sh.down.Store(true) // the call fails, but the caller's context is done
	s.Reserve(ctx, quota.Request{Key: "k"})
	if s.Down() {
		t.Error("a cancelled caller turned the store to its fallback")
	}
}

// TestPingReportsAnOutageTheFallbackHides: requests are still decided
// while the shared store is down, but Ping (what /readyz asks) says it is
// down, from the first failure until the store is back, and Failures
// counts every failed call (what /metrics shows); Ping itself takes the
// store neither down nor up.
func TestPingReportsAnOutageTheFallbackHides(t *testing.T) {
	sh := newShared(nil)
	s := fallback.New(sh, fallback.Options{Mode: fallback.Local, ProbeEvery: time.Hour})
	defer s.Close()
	ctx := context.Background()
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("Ping with the shared store up: %v", err)
	}
	sh.down.Store(true)
	if err := s.Ping(ctx); !errors.Is(err, errDown) {
		t.Fatalf("Ping with the shared store failing: %v, want its error", err)
	}
	if s.Down() || s.Failures() != 0 {
		t.Fatalf("a Ping took the store down (%t) or counted a failure (%d)", s.Down(), s.Failures())
	}
	for range 3 {
		if r, err := s.Reserve(ctx, quota.Request{Key: "k", Limits: []quota.Limit{{Count: 10, Window: time.Second}}}); err != nil || !r.OK {
			t.Fatalf("a request while the shared store is down: %+v, %v; want decided locally", r, err)
		}
	}
	if got := s.Failures(); got != 1 {
		t.Errorf("Failures = %d after the one call that found the store down (the next ones did not ask it), want 1", got)
	}
	sh.down.Store(false) // back, but the probe has not run yet
	err := s.Ping(ctx)
	if err == nil || !errors.Is(err, errDown) || !strings.Contains(err.Error(), "on_store_error local") {
		t.Errorf("Ping while the fallback decides: %v, want the outage, its mode and its cause", err)
	}
}
