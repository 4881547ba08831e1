package quota

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// shardCount spreads keys over independent locks so that admissions of
// different keys rarely wait for each other. A power of two.
const shardCount = 64

// sweepEvery is how often, in store time, a shard forgets keys that hold
// nothing a decision could need.
const sweepEvery = time.Minute

// roomEvery is the least time, in store time, between two passes over
// every key of a full store (see WithMaxKeys).
const roomEvery = time.Second

// MemoryStore is a Store that keeps every key in this process: the latest
// send times of a key for its exact limits (at most ExactCount of them),
// bucket counts for larger ones, and its unsettled requests. Keys idle for
// longer than their longest window are forgotten. The store's time base is
// its Clock, which is also the caller's: Settle takes times of that clock.
type MemoryStore struct {
	clock  Clock
	epoch  time.Time
	seed   maphash.Seed
	shards [shardCount]shard

	maxKeys  int64        // 0: no bound
	keyCount atomic.Int64 // keys held, in every shard
	roomMu   sync.Mutex   // one pass at a time over a full store
	nextRoom int64        // store time of the next pass; under roomMu
	roomAt   int64        // the earliest time the last pass found a key could be empty; under roomMu
}

// MemoryOption configures a MemoryStore.
type MemoryOption func(*MemoryStore)

// WithMaxKeys bounds the keys the store holds to n (n <= 0: no bound).
// When a request of a new key finds the store full, the store forgets
// every key that holds nothing any decision could need (no send in any of
// its windows, nothing queued or on its way, no hold, probe, budget or
// learned window in force: the keys its periodic sweep would forget), at
// most once per roomEvery (a flood of new keys costs one pass per period,
// not one per request). A key that still holds sends is never
// forgotten, since forgetting it would let its next requests exceed its
// limits. With no empty key, Reserve refuses the new key with a
// *KeyLimitError naming when one may be. Hold and Observe never refuse:
// they follow a reservation.
func WithMaxKeys(n int) MemoryOption {
	return func(s *MemoryStore) { s.maxKeys = int64(max(n, 0)) }
}

// ErrTooManyKeys is the error a *KeyLimitError wraps.
var ErrTooManyKeys = errors.New("quota: the store holds as many keys as it may")

// KeyLimitError refuses a request of a new key: the store holds Max keys
// and none of them is empty. Nothing of the request was booked.
type KeyLimitError struct {
	Max int
	// Now is the store's clock at the refusal; RetryAt the earliest time
	// at which one of the keys becomes empty if none of them is used
	// again (a retry then may still find the store full).
	Now, RetryAt time.Time
}

func (e *KeyLimitError) Error() string {
	return fmt.Sprintf("quota: the store holds %d keys, its bound, and none is empty before %v from now", e.Max, e.Delay())
}

func (e *KeyLimitError) Unwrap() error { return ErrTooManyKeys }

// Delay is the time until RetryAt; never negative.
func (e *KeyLimitError) Delay() time.Duration { return max(e.RetryAt.Sub(e.Now), 0) }

type shard struct {
	mu        sync.Mutex
	keys      map[string]*keyState
	nextSweep int64
	nextID    uint64
	count     *atomic.Int64 // the store's key count
}

// NewMemoryStore returns an empty MemoryStore reading time from clock
// (SystemClock when nil).
func NewMemoryStore(clock Clock, opts ...MemoryOption) *MemoryStore {
	if clock == nil {
		clock = SystemClock{}
	}
	s := &MemoryStore{clock: clock, epoch: clock.Now(), seed: maphash.MakeSeed()}
	for i := range s.shards {
		s.shards[i].keys = make(map[string]*keyState)
		s.shards[i].count = &s.keyCount
	}
	for _, o := range opts {
		o(s)
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

func (s *MemoryStore) time(t int64) time.Time { return s.epoch.Add(time.Duration(t)) }

// since converts a time of the caller's (and the store's) clock to the
// store's time base.
func (s *MemoryStore) since(t time.Time) int64 { return int64(t.Sub(s.epoch)) }

// Reserve implements Store. It holds only the lock of the key's shard.
func (s *MemoryStore) Reserve(_ context.Context, req Request) (Reservation, error) {
	if req.Key == "" {
		return Reservation{}, ErrNoKey
	}
	sh, now, t := s.lock(req.Key)
	if t >= sh.nextSweep {
		sh.sweep(t)
		sh.nextSweep = t + int64(sweepEvery)
	}
	k := sh.keys[req.Key]
	if k == nil {
		var err error
		if k, err = s.newKey(sh, req.Key); err != nil {
			sh.mu.Unlock()
			if err = s.makeRoom(); err != nil {
				return Reservation{}, err
			}
			sh, now, t = s.lock(req.Key)
			if k = sh.keys[req.Key]; k == nil {
				if k, err = s.newKey(sh, req.Key); err != nil {
					sh.mu.Unlock()
					return Reservation{}, err
				}
			}
		}
	}
	defer sh.mu.Unlock()
	k.expire(t)
	k.prune(t)
	limits := k.limitsAt(req.Limits, t)
	k.track(limits, t)

	res := Reservation{Now: now, At: now, Key: req.Key, Limits: req.Limits, Scout: req.Scout}
	// A booking kept for a refused caller goes to the first request that
	// comes for it.
	if i := k.takeBooking(t); i >= 0 {
		e := k.open[i]
		slot, at, binding, held, wakeable := k.earliest(limits, max(t, e.at), t, i, e.id, req.Scout)
		if at < e.expires {
			k.open[i].state = queued
			k.setTransit(i, int64(req.Transit))
			return s.decided(k, res, k.moveOpen(i, slot), at, t, binding, held, wakeable), nil
		}
	}
	sh.nextID++
	id := sh.nextID
	cand := t
	if last := k.lastBooked(); last > cand {
		cand = last // first in, first out
	}
	slot, at, binding, held, wakeable := k.earliest(limits, cand, t, -1, id, req.Scout)
	waiting := k.waiting()
	switch {
	case at == t:
	case at-t <= int64(req.MaxWait) || wakeable && req.MaxWait > 0:
		// Queued. A wait for a probe's outcome or a new report is bounded
		// by the caller's MaxWait, not by At.
		if waiting >= req.MaxQueue {
			res.At, res.Binding, res.Held, res.QueueFull = s.time(at), binding, held, true
			return res, nil
		}
	default:
		return s.refuse(k, res, req, at, t, binding, held, wakeable, waiting, id), nil
	}
	i := k.insertOpen(entry{at: slot, id: id, state: queued, transit: int64(req.Transit)})
	return s.decided(k, res, i, at, t, binding, held, wakeable), nil
}

// decided fills in the reservation of open entry i, which may leave at at,
// and releases it when at is now.
func (s *MemoryStore) decided(k *keyState, res Reservation, i int, at, t int64, binding Limit, held, wakeable bool) Reservation {
	e := k.open[i]
	res.OK, res.Slot, res.ID, res.At = true, s.time(e.at), e.id, s.time(at)
	if at <= t {
		res.Probe = k.release(i, t)
		return res
	}
	res.Binding, res.Held = binding, held
	if wakeable {
		res.Wake = k.wakeChan()
	}
	return res
}

// refuse answers a request that may not wait until at: with a booking for
// its retry when it asked for one and the queue has room.
func (s *MemoryStore) refuse(k *keyState, res Reservation, req Request, at, t int64, binding Limit, held, wakeable bool, waiting int, id uint64) Reservation {
	res.At, res.Binding, res.Held = s.time(at), binding, held
	switch {
	case wakeable && k.taught != nil && k.taught.probing && k.taught.probeID != 0:
		// The key waits for a probe's outcome: no time is known. (A key
		// waiting for the upstream's reset is told that reset.)
		res.At = s.time(min(at, t+refusalWait))
	case held || req.Book.Grace <= 0:
	case waiting >= req.MaxQueue:
		res.QueueFull = true
	default:
		told := at
		if r := int64(req.Book.Round); r > 0 {
			told = t + (at-t+r-1)/r*r
		}
		k.insertOpen(entry{at: told, id: id, state: booking, from: told - int64(req.Book.Early), expires: told + int64(req.Book.Grace)})
		res.At, res.Booked = s.time(told), true
	}
	return res
}

// Release implements Store. A request released but not yet settled counts
// as sent now; a settled one at its send time; a later booked one at its
// slot. The reservation goes if every limit admits it now; otherwise its
// slot moves to the earliest time that could.
func (s *MemoryStore) Release(_ context.Context, r Reservation) (Reservation, error) {
	if !r.OK || r.ID == 0 {
		return r, nil
	}
	sh, now, t := s.lock(r.Key)
	defer sh.mu.Unlock()
	r.Now, r.Wake = now, nil
	k := sh.keys[r.Key]
	if k == nil {
		r.At = now
		return r, nil
	}
	k.expire(t)
	i := k.find(s.since(r.Slot), r.ID)
	if i < 0 || k.open[i].state != queued {
		r.At = now // forgotten or already released: nothing holds it back
		return r, nil
	}
	limits := k.limitsAt(r.Limits, t)
	k.track(limits, t)
	slot, at, binding, held, wakeable := k.earliest(limits, max(t, k.open[i].at), t, i, r.ID, r.Scout)
	r.Held, r.Binding = held, binding
	if at <= t {
		r.At, r.Binding = now, Limit{}
		r.Probe = k.release(i, t)
		return r, nil
	}
	if slot > k.open[i].at {
		k.moveOpen(i, slot)
		r.Slot = s.time(slot)
	}
	r.At = s.time(at)
	if wakeable {
		r.Wake = k.wakeChan()
	}
	return r, nil
}

// Settle implements Store.
func (s *MemoryStore) Settle(_ context.Context, r Reservation, sentAt time.Time) (Reservation, error) {
	if !r.OK || r.ID == 0 {
		return r, nil
	}
	sh, _, t := s.lock(r.Key)
	defer sh.mu.Unlock()
	k := sh.keys[r.Key]
	if k == nil {
		return r, nil
	}
	x := min(s.since(sentAt), t) // never in the future
	if !r.Sent.IsZero() {
		// Written again (a retry on a new connection): keep the latest.
		if prev := s.since(r.Sent); x > prev {
			k.moveSent(prev, x)
			r.Sent = s.time(x)
		}
		return r, nil
	}
	i := k.find(s.since(r.Slot), r.ID)
	if i < 0 {
		return r, nil
	}
	x = max(x, k.open[i].at)
	k.removeOpen(i)
	k.addSent(x)
	r.Sent = s.time(x)
	return r, nil
}

// Cancel implements Store. The slot is removed; slots booked after it keep
// their times, so a cancellation never lets a later request jump the queue.
func (s *MemoryStore) Cancel(_ context.Context, r Reservation) error {
	if !r.OK || r.ID == 0 {
		return nil
	}
	sh, _, _ := s.lock(r.Key)
	defer sh.mu.Unlock()
	k := sh.keys[r.Key]
	if k == nil {
		return nil
	}
	if i := k.find(s.since(r.Slot), r.ID); i >= 0 {
		k.removeOpen(i)
	}
	if tg := k.taught; tg != nil && tg.probeID == r.ID {
		tg.probeID = 0 // another request may probe
		k.wakeWaiters()
	}
	return nil
}

// Hold implements Store.
func (s *MemoryStore) Hold(_ context.Context, key string, d time.Duration) error {
	if key == "" {
		return ErrNoKey
	}
	sh, _, t := s.lock(key)
	defer sh.mu.Unlock()
	k := sh.keyState(key)
	tg := k.teach()
	tg.holdUntil = max(tg.holdUntil, t+int64(d))
	tg.probing, tg.probeID = true, 0
	k.wakeWaiters() // they wait for the hold, then one probes
	return nil
}

// EndProbe implements Store.
func (s *MemoryStore) EndProbe(_ context.Context, r Reservation) error {
	if !r.Probe {
		return nil
	}
	sh, _, _ := s.lock(r.Key)
	defer sh.mu.Unlock()
	if k := sh.keys[r.Key]; k != nil && k.taught != nil && k.taught.probeID == r.ID {
		tg := k.taught
		tg.probing, tg.probeID, tg.informed = false, 0, true
		k.wakeWaiters()
	}
	return nil
}

// Observe implements Store.
func (s *MemoryStore) Observe(_ context.Context, key string, o Observation) error {
	if key == "" {
		return ErrNoKey
	}
	sh, _, t := s.lock(key)
	defer sh.mu.Unlock()
	k := sh.keyState(key)
	if len(o.Limits) > 0 && o.KeepFor > 0 {
		tg := k.teach()
		tg.learned = slices.Clone(o.Limits)
		tg.learnedUntil = t + int64(o.KeepFor)
		tg.replace = o.Replace
		k.track(o.Limits, t)
	}
	if o.Remaining < 0 || o.ResetAt.IsZero() {
		return nil
	}
	until := s.since(o.ResetAt)
	if until <= t {
		return nil // already reset
	}
	k.observe(o, t, s.since(o.SentAt), until)
	return nil
}

// keyState returns the key's state, creating it whatever the bound.
func (sh *shard) keyState(key string) *keyState {
	k := sh.keys[key]
	if k == nil {
		k = newKeyState()
		sh.keys[key] = k
		sh.count.Add(1)
	}
	return k
}

// newKey creates the state of a key sh does not hold, within the bound on
// keys; with sh locked.
func (s *MemoryStore) newKey(sh *shard, key string) (*keyState, error) {
	if n := s.keyCount.Add(1); s.maxKeys > 0 && n > s.maxKeys {
		s.keyCount.Add(-1)
		return nil, ErrTooManyKeys
	}
	k := newKeyState()
	sh.keys[key] = k
	return k, nil
}

// makeRoom forgets the empty keys of every shard, unless a pass found none
// less than roomEvery ago. It returns a *KeyLimitError when the store is
// still full. It takes the shards' locks one at a time; the caller holds
// none.
func (s *MemoryStore) makeRoom() error {
	s.roomMu.Lock()
	defer s.roomMu.Unlock()
	now := s.clock.Now()
	t := s.since(now)
	if s.keyCount.Load() < s.maxKeys {
		return nil
	}
	if t < s.nextRoom {
		return &KeyLimitError{Max: int(s.maxKeys), Now: now, RetryAt: s.time(max(s.roomAt, s.nextRoom))}
	}
	next := int64(math.MaxInt64)
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		sh.sweep(t)
		for _, k := range sh.keys {
			next = min(next, k.idleFrom(t))
		}
		sh.mu.Unlock()
	}
	if s.keyCount.Load() < s.maxKeys {
		return nil
	}
	s.nextRoom, s.roomAt = t+int64(roomEvery), next
	return &KeyLimitError{Max: int(s.maxKeys), Now: now, RetryAt: s.time(max(s.roomAt, s.nextRoom))}
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

// sweep forgets keys that hold nothing any decision could need.
func (sh *shard) sweep(t int64) {
	for key, k := range sh.keys {
		k.expire(t)
		k.prune(t)
		if k.idle(t) {
			delete(sh.keys, key)
			sh.count.Add(-1)
		}
	}
}

// Inspect implements Inspector.
func (s *MemoryStore) Inspect(_ context.Context, key string, limits []Limit) (KeyState, error) {
	if key == "" {
		return KeyState{}, ErrNoKey
	}
	sh, now, t := s.lock(key)
	defer sh.mu.Unlock()
	st := KeyState{Now: now}
	k := sh.keys[key]
	if k == nil {
		for _, l := range limits {
			st.Limits = append(st.Limits, LimitState{Limit: l, NextFree: now})
		}
		return st, nil
	}
	k.expire(t)
	for _, e := range k.open {
		switch e.state {
		case onItsWay:
			st.InFlight++
		case booking:
			st.Booked++
		default:
			st.Queued++
		}
	}
	for _, l := range k.limitsAt(limits, t) {
		ls := LimitState{Limit: l, NextFree: now}
		w := int64(l.Window)
		if b := k.bucketsFor(w); l.Count > ExactCount && b != nil {
			ls.Used = b.countFrom(t-w) + st.InFlight
		} else {
			for _, x := range k.sent {
				if x > t-w {
					ls.Used++
				}
			}
			ls.Used += st.InFlight
		}
		if nth, ok := k.nthLatest(l.Count, t, t, -1); ok && nth+w > t {
			ls.NextFree = s.time(nth + w)
		}
		st.Limits = append(st.Limits, ls)
	}
	if tg := k.taught; tg != nil {
		if tg.holdUntil > t {
			st.HoldUntil = s.time(tg.holdUntil)
		}
		st.Probing = tg.probing
		if t < tg.budgetUntil {
			st.Budget, st.BudgetUntil = tg.budget, s.time(tg.budgetUntil)
		}
		if len(tg.learned) > 0 && t < tg.learnedUntil {
			st.Learned, st.LearnedUntil = slices.Clone(tg.learned), s.time(tg.learnedUntil)
		}
	}
	return st, nil
}
