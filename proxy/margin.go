package proxy

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
	"go.uber.org/zap"
)

// A vendor counts a request when it arrives, after a one-way delay that
// varies by tens of milliseconds across the internet; the proxy counts it
// when it leaves. Every window the proxy enforces is therefore widened by a
// margin. The configured margin (1% of the window, at least 10ms) suits a
// steady path; marginTuner learns, per upstream, a wider one from the
// vendor's own verdicts, and lets it decay back.
//
// The evidence is an unpredicted throttle: the vendor throttles a request
// although its report shows it counted no more than the proxy sent in the
// window (no other caller spends the key), so only the delay can explain
// it. The margin then grows to twice the one in force plus 10ms (at most
// a quarter of the window), at most once per vendor window; without such
// throttles it halves every marginHalfLife back towards the configured one.

// marginHalfLife is how fast a learned margin decays.
const marginHalfLife = 10 * time.Minute

// marginTuner holds the margin learned for one upstream. It is safe for
// concurrent use; reading it is two atomic loads.
type marginTuner struct {
	learned atomic.Int64 // nanoseconds, as set
	setAt   atomic.Int64 // Unix nanoseconds of the setting

	mu        sync.Mutex
	lastWiden time.Time
}

// current returns the learned margin at now, decayed, in whole
// milliseconds (so that a cache keyed on it changes rarely).
func (m *marginTuner) current(now time.Time) time.Duration {
	l := m.learned.Load()
	if l == 0 {
		return 0
	}
	age := time.Duration(now.UnixNano() - m.setAt.Load())
	d := time.Duration(float64(l) * math.Exp2(-float64(max(age, 0))/float64(marginHalfLife)))
	return d.Truncate(time.Millisecond)
}

// widen grows the learned margin after an unpredicted throttle: inForce is
// the margin that was applied to the vendor's window, most the largest
// allowed, every the vendor's window (one widening per window at most). It
// returns the new margin and whether it changed.
func (m *marginTuner) widen(now time.Time, inForce, most, every time.Duration) (time.Duration, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.lastWiden.IsZero() && now.Sub(m.lastWiden) < every {
		return inForce, false
	}
	to := min(2*inForce+10*time.Millisecond, most)
	if to <= inForce {
		return inForce, false
	}
	m.lastWiden = now
	m.setAt.Store(now.UnixNano())
	m.learned.Store(int64(to))
	return to, true
}

// adopt takes a margin learned by another proxy (shared through the
// store) when it was set after this one's. It reports whether it did.
func (m *marginTuner) adopt(d time.Duration, setAt time.Time) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if setAt.IsZero() || setAt.UnixNano() <= m.setAt.Load() {
		return false
	}
	m.setAt.Store(setAt.UnixNano())
	m.learned.Store(int64(d))
	return true
}

// setting returns the learned margin as set, and when it was set.
func (m *marginTuner) setting() (time.Duration, time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return time.Duration(m.learned.Load()), time.Unix(0, m.setAt.Load())
}

// marginSyncEvery is how often a proxy on a shared store reads the margins
// other proxies learned.
const marginSyncEvery = 5 * time.Second

// shareMargin tells the other proxies of a shared store the margin this
// one just learned for up.
func (s *Server) shareMargin(up *upstream) {
	sharer, ok := s.store.(quota.MarginSharer)
	if !ok {
		return
	}
	d, at := up.tuner.setting()
	go func() {
		if err := s.storeCall(func(ctx context.Context) error { return sharer.ShareMargin(ctx, up.name, d, at) }); err != nil {
			s.log.Warn("sharing a window margin failed", zap.String("upstream", up.name), zap.Error(err))
		}
	}()
}

// syncMargins adopts, every marginSyncEvery until ctx ends, the margins
// other proxies of a shared store learned.
func (s *Server) syncMargins(ctx context.Context, sharer quota.MarginSharer) {
	t := time.NewTicker(marginSyncEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, up := range s.policy.Load().upstreams {
			var d time.Duration
			var at time.Time
			err := s.storeCall(func(ctx context.Context) (err error) { d, at, err = sharer.SharedMargin(ctx, up.name); return err })
			if err == nil && up.tuner.adopt(d, at) {
				s.log.Info("window margin adopted", zap.String("upstream", up.name), zap.Duration("to", d), zap.String("reason", "learned by another proxy of the shared store"))
			}
		}
	}
}

// marginFor is the margin of a window of length w when the learned margin
// is learned: the configured one, or the learned one when wider, never
// more than a quarter of the window.
func (u *upstream) marginFor(w, learned time.Duration) time.Duration {
	m := u.margin(w)
	if learned > m {
		m = max(min(learned, w/4), m)
	}
	return m
}

// enforcedLimits are a limit set's windows widened by the margins in
// force for the learned margin they were computed with.
type enforcedLimits struct {
	learned time.Duration
	limits  []quota.Limit
}

// enforced returns the set's limits as the store enforces them now: each
// window widened by its margin. It allocates only when the learned margin
// changed since the last call.
func (s *limitSet) enforced() []quota.Limit {
	learned := s.up.tuner.current(time.Now())
	if c := s.cache.Load(); c != nil && c.learned == learned {
		return c.limits
	}
	c := &enforcedLimits{learned: learned, limits: make([]quota.Limit, len(s.shown))}
	for i, l := range s.shown {
		c.limits[i] = quota.Limit{Count: l.Count, Window: l.Window + s.up.marginFor(l.Window, learned)}
	}
	s.cache.Store(c)
	return c.limits
}
