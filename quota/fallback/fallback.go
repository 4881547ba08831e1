// Package fallback keeps the proxy deciding while its shared quota store
// (Redis) fails: a Store that passes every call to the shared store while
// it answers, and, from its first failure until it answers again, decides
// by a mode:
//
//   - Local: each replica counts alone in a memory store, with every limit
//     divided by the number of replicas, so that together they stay under
//     each limit. When the shared store is back, the sends made meanwhile
//     are replayed into it (with the holds in force), so that its windows
//     count them.
//   - Reject: every request is refused with Unavailable (the proxy answers
//     429 with Retry-After).
//   - Allow: every request passes, counted nowhere.
//
// No call waits for the shared store past its own deadline, and while the
// store is down no call waits for it at all: a probe tries it once a
// second in the background. Each transition is logged once.
package fallback

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
	"go.uber.org/zap"
)

// Mode is what the store does while the shared store fails.
type Mode int

const (
	Local Mode = iota
	Reject
	Allow
)

// ParseMode reads "local", "reject" or "allow".
func ParseMode(s string) (Mode, error) {
	switch s {
	case "local", "":
		return Local, nil
	case "reject":
		return Reject, nil
	case "allow":
		return Allow, nil
	}
	return 0, fmt.Errorf("on_store_error %q: want local, reject or allow", s)
}

func (m Mode) String() string {
	switch m {
	case Reject:
		return "reject"
	case Allow:
		return "allow"
	}
	return "local"
}

// Shared is the store shared by the replicas (redisstore.Store).
type Shared interface {
	quota.Store
	// Ping reports whether the store answers.
	Ping(ctx context.Context) error
	// Record adds sends made elsewhere (while it was unreachable) to key,
	// under limits, the way Settle adds one. It may return before they
	// are written.
	Record(key string, limits []quota.Limit, sent []time.Time) error
}

// Unavailable is the error of a call refused in Reject mode: the caller
// answers "try again after RetryAfter".
type Unavailable struct {
	RetryAfter time.Duration
	Err        error // the shared store's failure
}

func (e *Unavailable) Error() string {
	return "quota store unavailable (on_store_error: reject): " + e.Err.Error()
}

func (e *Unavailable) Unwrap() error { return e.Err }

// Options configure a Store.
type Options struct {
	Mode Mode
	// Replicas share the shared store: in Local mode each gets
	// 1/Replicas of every limit (at least 1). Default 1.
	Replicas int
	// RetryAfter is what Reject mode tells callers. Default 1s.
	RetryAfter time.Duration
	// ProbeEvery is how often the shared store is tried while it is
	// down. Default 1s.
	ProbeEvery time.Duration
	// Log receives one line per transition. Nil logs nothing.
	Log *zap.Logger
	// Clock is the local store's clock (tests). Nil: the system clock.
	Clock quota.Clock
	// MaxKeys bounds the keys of the local store (quota.WithMaxKeys).
	MaxKeys int
}

// localBit marks the ids of reservations the local store made, so that
// their Release, Settle and Cancel go back to it. Shared ids stay far
// below it.
const localBit = 1 << 63

// maxReplay bounds the sends kept for replay, over all keys.
const maxReplay = 1 << 20

// Store is a quota.Store and quota.Inspector. It is safe for concurrent
// use. Close stops its probe.
type Store struct {
	shared Shared
	local  *quota.MemoryStore
	opts   Options
	log    *zap.Logger

	down     atomic.Bool
	failures atomic.Uint64 // failed calls of the shared store, decided without it
	mu       sync.Mutex    // guards what follows
	since    time.Time     // when the store went down
	gen      atomic.Uint64 // counts the recoveries: calls made before one do not take the store down
	cause    error
	probing  bool
	replay   map[string]*replayKey
	kept     int // sends in replay
	dropped  int // sends not kept (replay full)
	holds    map[string]time.Time
	stop     chan struct{}
	wg       sync.WaitGroup
}

// replayKey is what a key did locally while the shared store was down.
type replayKey struct {
	limits []quota.Limit // the key's own (undivided) limits, last seen
	sent   []time.Time
}

var (
	_ quota.Store        = (*Store)(nil)
	_ quota.Inspector    = (*Store)(nil)
	_ quota.MarginSharer = (*Store)(nil)
)

// New returns a Store over shared.
func New(shared Shared, opts Options) *Store {
	if opts.Replicas < 1 {
		opts.Replicas = 1
	}
	if opts.RetryAfter <= 0 {
		opts.RetryAfter = time.Second
	}
	if opts.ProbeEvery <= 0 {
		opts.ProbeEvery = time.Second
	}
	log := opts.Log
	if log == nil {
		log = zap.NewNop()
	}
	return &Store{
		shared: shared,
		local:  quota.NewMemoryStore(opts.Clock, quota.WithMaxKeys(opts.MaxKeys)),
		opts:   opts,
		log:    log,
		replay: map[string]*replayKey{},
		holds:  map[string]time.Time{},
		stop:   make(chan struct{}),
	}
}

// Close stops the probe.
func (s *Store) Close() {
	s.mu.Lock()
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// Down reports whether the store is deciding without the shared store.
func (s *Store) Down() bool { return s.down.Load() }

// Failures counts the calls the shared store failed (the caller's own
// cancellations aside), each decided without it: the errors the fallback
// hides from its callers, for a metric.
func (s *Store) Failures() uint64 { return s.failures.Load() }

// Ping reports whether the shared store answers, without changing the
// mode: while the store decides without it, an error saying since when
// and why (what a readiness check reports); else the shared store's own
// Ping.
func (s *Store) Ping(ctx context.Context) error {
	if s.down.Load() {
		s.mu.Lock()
		since, cause := s.since, s.cause
		s.mu.Unlock()
		return fmt.Errorf("deciding with on_store_error %s since %s: %w", s.opts.Mode, since.UTC().Format(time.RFC3339), cause)
	}
	return s.shared.Ping(ctx)
}

// failed notes a failure of the shared store, for a call made while the
// store was up in generation gen. A failure caused by the caller's own
// context (the client left) is not the store's. A call made before the
// store last came back (it waited out the outage and failed just after)
// is decided without the store, but does not take it down again: one
// outage is one failure and one recovery.
func (s *Store) failed(ctx context.Context, gen uint64, err error) bool {
	if err == nil || ctx.Err() != nil || errors.Is(err, quota.ErrNoKey) {
		return false
	}
	s.failures.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.down.Load() || gen != s.gen.Load() {
		return true
	}
	s.down.Store(true)
	s.since, s.cause = time.Now(), err
	s.log.Error("quota store unavailable: deciding without it until it answers again",
		zap.String("on_store_error", s.opts.Mode.String()), zap.Int("replicas", s.opts.Replicas), zap.Error(err))
	if !s.probing {
		s.probing = true
		s.wg.Add(1)
		go s.probe()
	}
	return true
}

// probe tries the shared store until it answers, then replays and opens.
func (s *Store) probe() {
	defer s.wg.Done()
	t := time.NewTicker(s.opts.ProbeEvery)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			s.mu.Lock()
			s.probing = false
			s.mu.Unlock()
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.opts.ProbeEvery)
		err := s.shared.Ping(ctx)
		cancel()
		if err == nil && s.recover() {
			return
		}
	}
}

// recover replays what the local store admitted and the holds in force,
// and sends calls to the shared store again. Sends noted while it runs are
// replayed too.
func (s *Store) recover() bool {
	s.mu.Lock()
	replay, holds, kept, dropped := s.replay, s.holds, s.kept, s.dropped
	s.replay, s.holds, s.kept, s.dropped = map[string]*replayKey{}, map[string]time.Time{}, 0, 0
	s.mu.Unlock()
	errs := s.replayTo(replay)
	now := time.Now()
	for key, until := range holds {
		if d := until.Sub(now); d > 0 {
			ctx, cancel := context.WithTimeout(context.Background(), s.opts.ProbeEvery)
			if err := s.shared.Hold(ctx, key, d); err != nil {
				errs++
			}
			cancel()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	errs += s.replayTo(s.replay) // noted meanwhile (Record does not block)
	s.log.Info("quota store back: deciding with it again",
		zap.Duration("down_for", time.Since(s.since).Round(time.Millisecond)), zap.Int("replayed_sends", kept+s.kept),
		zap.Int("replayed_keys", len(replay)), zap.Int("sends_not_replayed", dropped+s.dropped),
		zap.Int("holds", len(holds)), zap.Int("replay_errors", errs))
	s.replay, s.holds, s.kept, s.dropped = map[string]*replayKey{}, map[string]time.Time{}, 0, 0
	s.gen.Add(1)
	s.down.Store(false)
	s.probing = false
	return true
}

func (s *Store) replayTo(replay map[string]*replayKey) (errs int) {
	for key, rk := range replay {
		if err := s.shared.Record(key, rk.limits, rk.sent); err != nil {
			errs++
		}
	}
	return errs
}

// divide gives this replica its share of every limit.
func (s *Store) divide(ls []quota.Limit) []quota.Limit {
	if s.opts.Replicas == 1 || len(ls) == 0 {
		return ls
	}
	out := make([]quota.Limit, len(ls))
	for i, l := range ls {
		out[i] = quota.Limit{Count: max(1, l.Count/s.opts.Replicas), Window: l.Window}
	}
	return out
}

// fromLocal turns a reservation of the local store into one of s: its id
// marked, its limits and binding the caller's own.
func (s *Store) fromLocal(r quota.Reservation, own []quota.Limit) quota.Reservation {
	if r.OK && r.ID != 0 {
		r.ID |= localBit
	}
	for i, l := range r.Limits {
		if l == r.Binding && i < len(own) {
			r.Binding = own[i]
			break
		}
	}
	r.Limits = own
	return r
}

// toLocal is the reservation as the local store made it.
func (s *Store) toLocal(r quota.Reservation) quota.Reservation {
	r.ID &^= localBit
	r.Limits = s.divide(r.Limits)
	return r
}

func isLocal(r quota.Reservation) bool { return r.ID&localBit != 0 }

// Reserve implements quota.Store.
func (s *Store) Reserve(ctx context.Context, req quota.Request) (quota.Reservation, error) {
	if !s.down.Load() {
		gen := s.gen.Load()
		r, err := s.shared.Reserve(ctx, req)
		if !s.failed(ctx, gen, err) {
			return r, err
		}
	}
	return s.reserveDown(ctx, req)
}

func (s *Store) reserveDown(ctx context.Context, req quota.Request) (quota.Reservation, error) {
	switch s.opts.Mode {
	case Reject:
		return quota.Reservation{}, s.unavailable()
	case Allow:
		now := time.Now()
		return quota.Reservation{OK: true, Now: now, At: now, Key: req.Key, Limits: req.Limits}, nil
	}
	own := req.Limits
	req.Limits = s.divide(own)
	r, err := s.local.Reserve(ctx, req)
	if err != nil {
		return r, err
	}
	s.noteLimits(req.Key, own)
	return s.fromLocal(r, own), nil
}

func (s *Store) unavailable() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return &Unavailable{RetryAfter: s.opts.RetryAfter, Err: s.cause}
}

// Release implements quota.Store. A shared reservation released while the
// shared store fails is judged again by the mode (in Local mode it books a
// local slot).
func (s *Store) Release(ctx context.Context, r quota.Reservation) (quota.Reservation, error) {
	if isLocal(r) {
		own := r.Limits
		lr, err := s.local.Release(ctx, s.toLocal(r))
		return s.fromLocal(lr, own), err
	}
	if !s.down.Load() {
		gen := s.gen.Load()
		out, err := s.shared.Release(ctx, r)
		if !s.failed(ctx, gen, err) {
			return out, err
		}
	}
	if !r.OK || r.ID == 0 {
		return r, nil
	}
	return s.reserveDown(ctx, quota.Request{Key: r.Key, Limits: r.Limits, MaxWait: time.Hour, MaxQueue: 1 << 20, Scout: r.Scout})
}

// Settle implements quota.Store. A local send is recorded for the replay
// (or replayed at once, when the shared store is back already).
func (s *Store) Settle(ctx context.Context, r quota.Reservation, sentAt time.Time) (quota.Reservation, error) {
	if !isLocal(r) {
		if r.ID == 0 {
			return r, nil
		}
		return s.shared.Settle(ctx, r, sentAt)
	}
	own, prev := r.Limits, r.Sent
	lr, err := s.local.Settle(ctx, s.toLocal(r), sentAt)
	if err != nil {
		return s.fromLocal(lr, own), err
	}
	if !lr.Sent.IsZero() && !lr.Sent.Equal(prev) {
		s.noteSend(r.Key, own, prev, lr.Sent)
	}
	return s.fromLocal(lr, own), nil
}

// noteLimits remembers the limits of a key decided locally.
func (s *Store) noteLimits(key string, limits []quota.Limit) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if rk := s.replay[key]; rk != nil {
		rk.limits = limits
	} else if s.down.Load() {
		s.replay[key] = &replayKey{limits: limits}
	}
}

// noteSend records a local send at sent (moved from prev when settled
// again) for the replay.
func (s *Store) noteSend(key string, limits []quota.Limit, prev, sent time.Time) {
	s.mu.Lock()
	if !s.down.Load() {
		s.mu.Unlock()
		// Back already: straight into the shared store.
		if err := s.shared.Record(key, limits, []time.Time{sent}); err != nil {
			s.log.Warn("replaying a send made during the fallback failed", zap.Error(err))
		}
		return
	}
	defer s.mu.Unlock()
	rk := s.replay[key]
	if rk == nil {
		rk = &replayKey{limits: limits}
		s.replay[key] = rk
	}
	if !prev.IsZero() {
		for i := len(rk.sent) - 1; i >= 0; i-- {
			if rk.sent[i].Equal(prev) {
				rk.sent[i] = sent
				return
			}
		}
	}
	if s.kept >= maxReplay {
		s.dropped++
		return
	}
	// Drop what no window of the key can reach any more.
	longest := time.Duration(0)
	for _, l := range limits {
		longest = max(longest, l.Window)
	}
	i := 0
	for i < len(rk.sent) && sent.Sub(rk.sent[i]) > longest {
		i++
	}
	if i > 0 {
		rk.sent = append(rk.sent[:0], rk.sent[i:]...)
		s.kept -= i
	}
	rk.sent = append(rk.sent, sent)
	s.kept++
}

// Cancel implements quota.Store.
func (s *Store) Cancel(ctx context.Context, r quota.Reservation) error {
	if isLocal(r) {
		return s.local.Cancel(ctx, s.toLocal(r))
	}
	if s.down.Load() || !r.OK || r.ID == 0 {
		return nil // its entry lapses in the shared store
	}
	gen := s.gen.Load()
	err := s.shared.Cancel(ctx, r)
	if s.failed(ctx, gen, err) {
		return nil
	}
	return err
}

// Hold implements quota.Store. A hold made while the shared store fails is
// kept locally and given to the shared store when it is back.
func (s *Store) Hold(ctx context.Context, key string, d time.Duration) error {
	if !s.down.Load() {
		gen := s.gen.Load()
		err := s.shared.Hold(ctx, key, d)
		if !s.failed(ctx, gen, err) {
			return err
		}
	}
	s.mu.Lock()
	if until := time.Now().Add(d); until.After(s.holds[key]) {
		s.holds[key] = until
	}
	s.mu.Unlock()
	return s.local.Hold(ctx, key, d)
}

// EndProbe implements quota.Store.
func (s *Store) EndProbe(ctx context.Context, r quota.Reservation) error {
	if isLocal(r) {
		return s.local.EndProbe(ctx, s.toLocal(r))
	}
	if s.down.Load() {
		return nil
	}
	gen := s.gen.Load()
	err := s.shared.EndProbe(ctx, r)
	if s.failed(ctx, gen, err) {
		return nil
	}
	return err
}

// Observe implements quota.Store. While the shared store fails, the
// report goes to the local store, divided as the limits are.
func (s *Store) Observe(ctx context.Context, key string, o quota.Observation) error {
	if !s.down.Load() {
		gen := s.gen.Load()
		err := s.shared.Observe(ctx, key, o)
		if !s.failed(ctx, gen, err) {
			return err
		}
	}
	if s.opts.Mode != Local {
		return nil
	}
	if n := s.opts.Replicas; n > 1 {
		o.Limits = s.divide(o.Limits)
		if o.Limit > 0 {
			o.Limit = max(1, o.Limit/n)
		}
		if o.Remaining > 0 {
			o.Remaining /= n
		}
	}
	return s.local.Observe(ctx, key, o)
}

// Inspect implements quota.Inspector: the shared store's view, or the
// local one while it fails.
func (s *Store) Inspect(ctx context.Context, key string, limits []quota.Limit) (quota.KeyState, error) {
	if in, ok := s.shared.(quota.Inspector); ok && !s.down.Load() {
		gen := s.gen.Load()
		st, err := in.Inspect(ctx, key, limits)
		if !s.failed(ctx, gen, err) {
			return st, err
		}
	}
	return s.local.Inspect(ctx, key, s.divide(limits))
}

// ShareMargin implements quota.MarginSharer when the shared store does;
// while it fails, the margin stays with this proxy.
func (s *Store) ShareMargin(ctx context.Context, upstream string, margin time.Duration, setAt time.Time) error {
	ms, ok := s.shared.(quota.MarginSharer)
	if !ok || s.down.Load() {
		return nil
	}
	gen := s.gen.Load()
	err := ms.ShareMargin(ctx, upstream, margin, setAt)
	if s.failed(ctx, gen, err) {
		return nil
	}
	return err
}

// SharedMargin implements quota.MarginSharer: none while the shared store
// fails.
func (s *Store) SharedMargin(ctx context.Context, upstream string) (time.Duration, time.Time, error) {
	ms, ok := s.shared.(quota.MarginSharer)
	if !ok || s.down.Load() {
		return 0, time.Time{}, nil
	}
	gen := s.gen.Load()
	d, at, err := ms.SharedMargin(ctx, upstream)
	if s.failed(ctx, gen, err) {
		return 0, time.Time{}, nil
	}
	return d, at, err
}
