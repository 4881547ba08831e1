package redisstore

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
	"github.com/redis/go-redis/v9"
)

// timeBase converts times between the caller's clock and the store's:
// microseconds since the Unix epoch by Redis TIME (or by Options.Clock in
// tests). Decisions read the time inside their script; what the caller
// measured locally (when a request was sent, when the upstream's window
// resets) is converted with bounds on the local-to-Redis clock offset,
// measured, never trusted raw.
type timeBase struct {
	clock quota.Clock // nil: Redis TIME

	mu sync.Mutex
	// The store's time at local instant ref lies in [lo, hi] nanoseconds
	// since the epoch (on every master of a cluster).
	ref    time.Time
	lo, hi int64
	known  bool
}

// sampleOffset reads TIME on c a few times and keeps the sample with the
// smallest round trip: the store's time at the local instant before the
// call lies between TIME less the round trip and TIME plus its own 1µs
// resolution.
func sampleOffset(ctx context.Context, c redis.Cmdable) (ref time.Time, lo, hi int64, err error) {
	best := time.Duration(-1)
	for range 5 {
		l0 := time.Now()
		tm, err := c.Time(ctx).Result()
		if err != nil {
			if best >= 0 {
				break
			}
			return time.Time{}, 0, 0, err
		}
		rtt := time.Since(l0)
		if best < 0 || rtt < best {
			best, ref = rtt, l0
			ns := tm.UnixNano()
			lo, hi = ns-int64(rtt), ns+int64(time.Microsecond)
		}
	}
	return ref, lo, hi, nil
}

// measure refreshes the offset from every master: the bounds widen to
// cover them all, so that converted times are safe whichever node holds a
// key.
func (b *timeBase) measure(ctx context.Context, rdb redis.UniversalClient) error {
	if b.clock != nil {
		return nil
	}
	type sample struct {
		ref    time.Time
		lo, hi int64
	}
	var mu sync.Mutex
	var samples []sample
	take := func(ctx context.Context, c redis.Cmdable) error {
		ref, lo, hi, err := sampleOffset(ctx, c)
		if err != nil {
			return err
		}
		mu.Lock()
		samples = append(samples, sample{ref, lo, hi})
		mu.Unlock()
		return nil
	}
	var err error
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return take(ctx, c) })
	} else {
		err = take(ctx, rdb)
	}
	if err != nil {
		return err
	}
	if len(samples) == 0 {
		return errors.New("no Redis node answered TIME")
	}
	ref := samples[0].ref
	lo, hi := int64(0), int64(0)
	for i, s := range samples {
		d := int64(ref.Sub(s.ref)) // carry each sample to ref
		if i == 0 || s.lo+d < lo {
			lo = s.lo + d
		}
		if i == 0 || s.hi+d > hi {
			hi = s.hi + d
		}
	}
	b.mu.Lock()
	b.ref, b.lo, b.hi, b.known = ref, lo, hi, true
	b.mu.Unlock()
	return nil
}

func (b *timeBase) ready() bool {
	if b.clock != nil {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.known
}

// nowArg is the "now" argument of a script: empty (Redis TIME), or the
// test clock in whole microseconds, rounded down (a request admitted at
// the rounded time is never early).
func (b *timeBase) nowArg() string {
	if b.clock == nil {
		return ""
	}
	return strconv.FormatInt(floorMicro(b.clock.Now().UnixNano()), 10)
}

// late converts a local time to the latest store time it can be, in
// microseconds: a send recorded no earlier than it happened.
func (b *timeBase) late(t time.Time) int64 {
	if b.clock != nil {
		return ceilMicro(t.UnixNano())
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return ceilMicro(b.hi + int64(t.Sub(b.ref)))
}

// early converts a local time to the earliest store time it can be.
func (b *timeBase) early(t time.Time) int64 {
	if b.clock != nil {
		return floorMicro(t.UnixNano())
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return floorMicro(b.lo + int64(t.Sub(b.ref)))
}

// nowLate is the latest the store's clock can read now.
func (b *timeBase) nowLate() int64 {
	if b.clock != nil {
		return ceilMicro(b.clock.Now().UnixNano())
	}
	return b.late(time.Now())
}

func floorMicro(ns int64) int64 {
	us := ns / 1000
	if ns%1000 < 0 {
		us--
	}
	return us
}

func ceilMicro(ns int64) int64 { return -floorMicro(-ns) }

// micro is a store time as a time.Time.
func micro(us int64) time.Time { return time.UnixMicro(us) }

// durMicro converts a duration to whole microseconds, rounded up.
func durMicro(d time.Duration) int64 { return ceilMicro(int64(d)) }
