package quota

import (
	"context"
	"hash/maphash"
	"math"
	"slices"
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
// one entry per request inside the longest window of a key (a sliding log),
// so its decisions are exact. Keys idle for longer than their longest
// window are forgotten.
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
	nextID    uint64
}

type entryState uint8

const (
	pending  entryState = iota // booked for a future slot
	released                   // on its way, send time not known yet
	settled                    // sent at entry.at
)

type entry struct {
	at    int64 // nanoseconds since the store's epoch
	id    uint64
	state entryState
}

// keyLog is the sliding log of one key, sorted by at.
type keyLog struct {
	entries   []entry
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

// lock takes the key's shard and reads the clock under it, so that the
// times one key sees never go backwards between two decisions.
func (s *MemoryStore) lock(key string) (*shard, time.Time, int64) {
	sh := s.shardOf(key)
	sh.mu.Lock()
	now := s.clock.Now()
	return sh, now, int64(now.Sub(s.epoch))
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

	sh, now, t := s.lock(req.Key)
	defer sh.mu.Unlock()
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

	res := Reservation{Now: now, At: now, key: req.Key, limits: req.Limits, slot: noSlot}
	es := kl.entries
	slot := t
	if n := len(es); n > 0 && es[n-1].at > slot {
		slot = es[n-1].at // first in, first out
	}
	var bindingAt int64 = math.MinInt64
	for _, l := range req.Limits {
		if len(es) < l.Count {
			continue
		}
		// The new slot and the Count-th latest one must be a full window
		// apart, so that no interval of length Window holds both.
		free := es[len(es)-l.Count].at + int64(l.Window)
		slot = max(slot, free)
		if free > bindingAt || free == bindingAt && l.Window > res.Binding.Window {
			bindingAt, res.Binding = free, l
		}
	}
	res.At = s.epoch.Add(time.Duration(slot))
	state := released
	if slot == t {
		res.Binding = Limit{}
	} else {
		state = pending
		if time.Duration(slot-t) > req.MaxWait {
			return res, nil
		}
		waiting := 0
		for i := len(es) - 1; i >= 0 && es[i].at > t; i-- {
			waiting++
		}
		if waiting >= req.MaxQueue {
			res.QueueFull = true
			return res, nil
		}
	}
	sh.nextID++
	kl.entries = append(es, entry{at: slot, id: sh.nextID, state: state})
	res.OK, res.slot, res.id = true, slot, sh.nextID
	return res, nil
}

// Release implements Store. A request released but not yet settled counts
// as sent now; a settled one at its send time; a later booked one at its
// slot. The reservation goes if every limit admits it now; otherwise its
// slot moves to the earliest time that could.
func (s *MemoryStore) Release(_ context.Context, r Reservation) (Reservation, error) {
	if !r.OK || r.slot == noSlot {
		return r, nil
	}
	sh, now, t := s.lock(r.key)
	defer sh.mu.Unlock()
	r.Now = now
	kl := sh.keys[r.key]
	i := kl.find(r.slot, r.id)
	if i < 0 || kl.entries[i].state != pending {
		r.At = now // forgotten or already released: nothing holds it back
		return r, nil
	}
	self := kl.entries[i]
	cand := max(t, self.at)
	for range len(kl.entries) + 1 { // each round only moves cand later
		next := cand
		for _, l := range r.limits {
			if nth, ok := kl.nthLatest(l.Count, cand, t, self.id); ok {
				next = max(next, nth+int64(l.Window))
			}
		}
		if next == cand {
			break
		}
		cand = next
	}
	if cand <= t {
		kl.entries[i].state = released
		r.At = now
		return r, nil
	}
	kl.move(i, cand)
	r.slot = cand
	r.At = s.epoch.Add(time.Duration(cand))
	return r, nil
}

// nthLatest returns the n-th latest effective time at or before cand among
// the entries other than skip, where an entry not yet settled and due by t
// counts as t. ok is false when fewer than n entries qualify.
func (kl *keyLog) nthLatest(n int, cand, t int64, skip uint64) (int64, bool) {
	// Effective times, latest first: booked entries due after t (their
	// slot), then the unsettled entries due by t (all at t), then the
	// settled ones (their send time, never after t).
	seen := 0
	es := kl.entries
	for i := len(es) - 1; i >= 0 && es[i].at > t; i-- {
		if es[i].id == skip || es[i].at > cand || es[i].state == settled {
			continue
		}
		if seen++; seen == n {
			return es[i].at, true
		}
	}
	for i := len(es) - 1; i >= 0; i-- {
		if es[i].id != skip && es[i].at <= t && es[i].state != settled {
			if seen++; seen == n {
				return t, true
			}
		}
	}
	for i := len(es) - 1; i >= 0; i-- {
		if es[i].id != skip && es[i].state == settled && es[i].at <= cand {
			if seen++; seen == n {
				return es[i].at, true
			}
		}
	}
	return 0, false
}

// Settle implements Store.
func (s *MemoryStore) Settle(_ context.Context, r Reservation, sentAt time.Time) error {
	if !r.OK || r.slot == noSlot {
		return nil
	}
	sh, _, _ := s.lock(r.key)
	defer sh.mu.Unlock()
	kl := sh.keys[r.key]
	i := kl.find(r.slot, r.id)
	if i < 0 {
		return nil
	}
	at := max(kl.entries[i].at, int64(sentAt.Sub(s.epoch)))
	kl.entries[i].state = settled
	kl.move(i, at)
	return nil
}

// Cancel implements Store. The slot is removed from the key's log; slots
// booked after it keep their times, so a cancellation never lets a later
// request jump the queue.
func (s *MemoryStore) Cancel(_ context.Context, r Reservation) error {
	if !r.OK || r.slot == noSlot {
		return nil
	}
	sh, _, _ := s.lock(r.key)
	defer sh.mu.Unlock()
	kl := sh.keys[r.key]
	if i := kl.find(r.slot, r.id); i >= 0 {
		kl.entries = slices.Delete(kl.entries, i, i+1)
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

// find returns the index of the entry booked at slot with id, or -1.
func (kl *keyLog) find(slot int64, id uint64) int {
	if kl == nil {
		return -1
	}
	es := kl.entries
	for i := sort.Search(len(es), func(i int) bool { return es[i].at >= slot }); i < len(es) && es[i].at == slot; i++ {
		if es[i].id == id {
			return i
		}
	}
	return -1
}

// move sets entry i's time to at (never earlier) and keeps the log sorted.
func (kl *keyLog) move(i int, at int64) {
	e := kl.entries[i]
	e.at = at
	j := i
	for j+1 < len(kl.entries) && kl.entries[j+1].at <= at {
		kl.entries[j] = kl.entries[j+1]
		j++
	}
	kl.entries[j] = e
}

// prune drops the entries that no window reaching t can contain.
func (kl *keyLog) prune(t int64) {
	cut := t - kl.maxWindow
	i := 0
	for i < len(kl.entries) && kl.entries[i].at <= cut {
		i++
	}
	switch {
	case i == 0:
	case i == len(kl.entries):
		kl.entries = kl.entries[:0]
	default:
		kl.entries = kl.entries[i:]
	}
}

// sweep forgets keys whose latest entry has left their longest window.
func (sh *shard) sweep(t int64) {
	for k, kl := range sh.keys {
		if n := len(kl.entries); n == 0 || kl.entries[n-1].at <= t-kl.maxWindow {
			delete(sh.keys, k)
		}
	}
}
