package proxy

import (
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
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
