package quota

import (
	"context"
	"hash/maphash"
	"math"
	"sort"
	"sync"
	"time"
)

// shardCount spreads keys over independent locks so that admissions of
// different keys rarely wait for each other. A power of two.
const shardCount = 64

// sweepEvery is how often, in store time, a shard drops keys whose every
// slot has left every window.
const sweepEvery = time.Minute

// noSlot marks a reservation that booked nothing (no limits, or refused).
const noSlot = math.MinInt64

// MemoryStore is a Store that keeps every key in this process. It keeps
// one timestamp per request released inside the longest window of a key
// (a sliding log), so its decisions are exact: never over a limit, and
// under it only by the requests that were cancelled after later ones had
// already been booked. Keys idle for longer than their longest window are
// forgotten.
type MemoryStore struct {
	clock  Clock
	epoch  time.Time
	seed   maphash.Seed
	shards [shardCount]shard
}

type shard struct {
	mu        sync.Mutex
	keys      map[string]*keyLog
	nextSweep int64
}

// keyLog is the sliding log of one key: the slots booked inside its longest
// window, in nondecreasing order (slots may lie in the future).
type keyLog struct {
	slots     []int64 // nanoseconds since the store's epoch
	maxWindow int64
}

// NewMemoryStore returns an empty MemoryStore reading time from clock
// (SystemClock when nil).
func NewMemoryStore(clock Clock) *MemoryStore {
	if clock == nil {
		clock = SystemClock{}
	}
	s := &MemoryStore{clock: clock, epoch: clock.Now(), seed: maphash.MakeSeed()}
	for i := range s.shards {
		s.shards[i].keys = make(map[string]*keyLog)
	}
	return s
}

func (s *MemoryStore) shardOf(key string) *shard {
	return &s.shards[maphash.String(s.seed, key)&(shardCount-1)]
}

// Reserve implements Store. It holds only the lock of the key's shard, for
// a few comparisons per limit.
func (s *MemoryStore) Reserve(_ context.Context, req Request) (Reservation, error) {
	if req.Key == "" {
		return Reservation{}, ErrNoKey
	}
	if len(req.Limits) == 0 {
		now := s.clock.Now()
		return Reservation{OK: true, Now: now, At: now, key: req.Key, slot: noSlot}, nil
	}
	var maxWindow int64
	for _, l := range req.Limits {
		maxWindow = max(maxWindow, int64(l.Window))
	}

	sh := s.shardOf(req.Key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	// Read the clock under the lock, so that the times seen by one key
	// never go backwards between two decisions.
	now := s.clock.Now()
	t := int64(now.Sub(s.epoch))
	res := Reservation{Now: now, At: now, key: req.Key, slot: noSlot}
	if t >= sh.nextSweep {
		sh.sweep(t)
		sh.nextSweep = t + int64(sweepEvery)
	}
	kl := sh.keys[req.Key]
	if kl == nil {
		kl = &keyLog{}
		sh.keys[req.Key] = kl
	}
	kl.maxWindow = maxWindow
	kl.prune(t)

	slots := kl.slots
	slot := t
	if n := len(slots); n > 0 && slots[n-1] > slot {
		slot = slots[n-1] // first in, first out
	}
	var bindingAt int64 = math.MinInt64
	for _, l := range req.Limits {
		if len(slots) < l.Count {
			continue
		}
		// The new slot and the Count-th latest one must be a full window
		// apart, so that no interval of length Window holds both.
		free := slots[len(slots)-l.Count] + int64(l.Window)
		slot = max(slot, free)
		if free > bindingAt || free == bindingAt && l.Window > res.Binding.Window {
			bindingAt, res.Binding = free, l
		}
	}
	res.At = s.epoch.Add(time.Duration(slot))
	if slot == t {
		res.Binding = Limit{}
	}
	if delay := time.Duration(slot - t); delay > 0 {
		if delay > req.MaxWait {
			return res, nil
		}
		if pending := len(slots) - sort.Search(len(slots), func(i int) bool { return slots[i] > t }); pending >= req.MaxQueue {
			res.QueueFull = true
			return res, nil
		}
	}
	kl.slots = append(slots, slot)
	res.OK = true
	res.slot = slot
	return res, nil
}

// Cancel implements Store. The slot is removed from the key's log; slots
// booked after it keep their times, so a cancellation never lets a later
// request jump the queue. Slots with equal times are interchangeable, so
// removing any one of them is the same.
func (s *MemoryStore) Cancel(_ context.Context, r Reservation) error {
	if !r.OK || r.slot == noSlot {
		return nil
	}
	sh := s.shardOf(r.key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	kl := sh.keys[r.key]
	if kl == nil {
		return nil
	}
	i := sort.Search(len(kl.slots), func(i int) bool { return kl.slots[i] >= r.slot })
	if i < len(kl.slots) && kl.slots[i] == r.slot {
		kl.slots = append(kl.slots[:i], kl.slots[i+1:]...)
	}
	return nil
}

// Keys returns how many keys the store holds, idle ones not yet swept
// included.
func (s *MemoryStore) Keys() int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		n += len(sh.keys)
		sh.mu.Unlock()
	}
	return n
}

// prune drops the slots that no window reaching t can contain.
func (kl *keyLog) prune(t int64) {
	cut := t - kl.maxWindow
	i := 0
	for i < len(kl.slots) && kl.slots[i] <= cut {
		i++
	}
	switch {
	case i == 0:
	case i == len(kl.slots):
		kl.slots = kl.slots[:0]
	default:
		kl.slots = kl.slots[i:]
	}
}

// sweep forgets keys whose latest slot has left their longest window.
func (sh *shard) sweep(t int64) {
	for k, kl := range sh.keys {
		if n := len(kl.slots); n == 0 || kl.slots[n-1] <= t-kl.maxWindow {
			delete(sh.keys, k)
		}
	}
}
