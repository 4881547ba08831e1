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

// keyLog is the sliding log of one key, sorted by at, and what the
// upstream taught about the key.
type keyLog struct {
	entries   []entry
	maxWindow int64

	holdUntil int64  // no release before this
	probing   bool   // after the hold, one request goes first
	probeID   uint64 // the probe in flight, or 0
	probeAt   int64

	budget      int   // releases left before budgetUntil, when active
	budgetUntil int64 // the upstream's reset; the budget is off after it
	informed    bool  // a scout came back, or the upstream reported a budget

	learned      []Limit // windows the upstream reported
	learnedUntil int64
	replace      bool // learned windows replace the caller's
}

// probePoll is how often requests waiting for a probe's outcome look again.
const probePoll = 50 * time.Millisecond

// limits returns the limits in force for a request at t.
func (kl *keyLog) limits(req []Limit, t int64) []Limit {
	if len(kl.learned) == 0 || t >= kl.learnedUntil {
		return req
	}
	if kl.replace {
		return kl.learned
	}
	return append(slices.Clip(req), kl.learned...)
}

// gate returns the earliest time from t at which request id may leave as
// far as holds, probes and the reported budget go. With scout, a key that
// knows nothing of its upstream quota starts probing.
func (kl *keyLog) gate(t int64, id uint64, scout bool) int64 {
	if scout {
		if kl.budgetUntil > 0 && t >= kl.budgetUntil {
			kl.informed, kl.budgetUntil = false, 0 // the reported window is over
		}
		if !kl.informed && !kl.probing {
			kl.probing, kl.probeID = true, 0
		}
	}
	if t < kl.holdUntil {
		return kl.holdUntil
	}
	if kl.probing && kl.probeID != 0 && kl.probeID != id && t-kl.probeAt < int64(ProbeTimeout) {
		return t + int64(probePoll)
	}
	if t < kl.budgetUntil && kl.budget <= 0 {
		return kl.budgetUntil
	}
	return t
}

// release marks entry i as gone at t: it may become the probe, and it
// spends the budget.
func (kl *keyLog) release(i int, t int64, res *Reservation) {
	kl.entries[i].state = released
	if kl.probing && (kl.probeID == 0 || t-kl.probeAt >= int64(ProbeTimeout)) {
		kl.probeID, kl.probeAt = kl.entries[i].id, t
		res.Probe = true
	}
	if t < kl.budgetUntil {
		kl.budget--
	}
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
	kl := sh.keyLog(req.Key)
	limits := kl.limits(req.Limits, t)
	for _, l := range limits {
		maxWindow = max(maxWindow, int64(l.Window))
	}
	// Keys matched by rules with different limits share a log: keep what
	// the longest window needs.
	kl.maxWindow = max(kl.maxWindow, maxWindow)
	kl.prune(t)

	res := Reservation{Now: now, At: now, key: req.Key, limits: req.Limits, scout: req.Scout, slot: noSlot}
	es := kl.entries
	slot := t
	if n := len(es); n > 0 && es[n-1].at > slot {
		slot = es[n-1].at // first in, first out
	}
	var bindingAt int64 = math.MinInt64
	for _, l := range limits {
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
	if slot == t {
		// Leaving now: requests released but not yet written count as sent
		// now, not at their booked time.
		for _, l := range limits {
			if len(es) < l.Count {
				continue // fewer entries than the limit: none can break it
			}
			if nth, ok := kl.nthLatest(l.Count, t, t, 0); ok && nth+int64(l.Window) > slot {
				slot, res.Binding = nth+int64(l.Window), l
			}
		}
	}
	sh.nextID++
	id := sh.nextID
	if g := kl.gate(t, id, req.Scout); g > slot {
		slot, res.Held, res.Binding = g, true, Limit{}
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
	kl.entries = append(es, entry{at: slot, id: id, state: pending})
	res.OK, res.slot, res.id = true, slot, id
	if state == released {
		kl.release(len(kl.entries)-1, t, &res)
	}
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
	limits := kl.limits(r.limits, t)
	r.Held = false
	for range len(kl.entries) + 1 { // each round only moves cand later
		next := cand
		if g := kl.gate(t, self.id, r.scout); g > next {
			next, r.Held = g, true
		}
		for _, l := range limits {
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
		r.At = now
		kl.release(i, t, &r)
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
	sh := s.shardOf(r.key)
	sh.mu.Lock()
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
	if kl != nil && kl.probeID == r.id {
		kl.probeID = 0 // another request may probe
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
	kl := sh.keyLog(key)
	kl.holdUntil = max(kl.holdUntil, t+int64(d))
	kl.probing, kl.probeID = true, 0
	return nil
}

// EndProbe implements Store.
func (s *MemoryStore) EndProbe(_ context.Context, r Reservation) error {
	if !r.Probe {
		return nil
	}
	sh, _, _ := s.lock(r.key)
	defer sh.mu.Unlock()
	if kl := sh.keys[r.key]; kl != nil && kl.probeID == r.id {
		kl.probing, kl.probeID, kl.informed = false, 0, true
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
	kl := sh.keyLog(key)
	if len(o.Limits) > 0 && o.KeepFor > 0 {
		kl.learned = slices.Clone(o.Limits)
		kl.learnedUntil = t + int64(o.KeepFor)
		kl.replace = o.Replace
		for _, l := range o.Limits {
			kl.maxWindow = max(kl.maxWindow, int64(l.Window))
		}
	}
	if o.Remaining < 0 || o.ResetIn <= 0 {
		return nil
	}
	// The upstream counted the request sent at SentAt; it had not yet
	// counted the ones this store released after it.
	sent := int64(o.SentAt.Sub(s.epoch))
	after := 0
	es := kl.entries
	for i := sort.Search(len(es), func(i int) bool { return es[i].at > sent }); i < len(es); i++ {
		if es[i].state == settled {
			after++
		}
	}
	for _, e := range es {
		if e.state == released {
			after++ // on its way: the upstream has not counted it yet
		}
	}
	budget := o.Remaining - after - o.Reserve
	until := t + int64(o.ResetIn)
	kl.informed = true
	if t >= kl.budgetUntil || until > kl.budgetUntil+int64(time.Second) {
		kl.budget, kl.budgetUntil = budget, until // a new upstream window
	} else {
		kl.budget = min(kl.budget, budget)
	}
	return nil
}

// keyLog returns the key's log, creating it.
func (sh *shard) keyLog(key string) *keyLog {
	kl := sh.keys[key]
	if kl == nil {
		kl = &keyLog{}
		sh.keys[key] = kl
	}
	return kl
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

// budgetRetention is how long entries are kept, even without limits, while
// an upstream-reported budget is in force: Observe counts the requests sent
// after the one that got the report.
const budgetRetention = int64(10 * time.Second)

// staleUnsettled is how long past its window an entry that was never
// settled is kept: a caller must settle or cancel every reservation, and
// this only bounds the damage when one does not.
const staleUnsettled = int64(10 * time.Minute)

// prune drops the settled entries that no window reaching t can contain.
// Entries not yet settled stay: they count as sent now.
func (kl *keyLog) prune(t int64) {
	keep := kl.maxWindow
	if t < kl.budgetUntil {
		keep = max(keep, budgetRetention)
	}
	cut := t - keep
	i := 0
	for i < len(kl.entries) && kl.entries[i].at <= cut {
		i++
	}
	if i == 0 {
		return
	}
	kept := kl.entries[:0]
	for _, e := range kl.entries[:i] {
		if e.state != settled && e.at > cut-staleUnsettled {
			kept = append(kept, e)
		}
	}
	if len(kept) == 0 {
		if i == len(kl.entries) {
			kl.entries = kl.entries[:0]
		} else {
			kl.entries = kl.entries[i:]
		}
		return
	}
	kl.entries = append(kept, kl.entries[i:]...)
}

// sweep forgets keys whose latest entry has left their longest window.
func (sh *shard) sweep(t int64) {
	for k, kl := range sh.keys {
		kl.prune(t)
		// A key still probing long after its hold, with nothing in
		// flight, sent nothing since: forget it (it starts again as a new
		// key does, with a scout).
		probeLive := kl.probing && t < kl.holdUntil+int64(ProbeTimeout)
		if len(kl.entries) == 0 && t >= kl.holdUntil && !probeLive && t >= kl.budgetUntil && t >= kl.learnedUntil {
			delete(sh.keys, k)
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
	st := KeyState{Now: now, Budget: -1}
	kl := sh.keys[key]
	if kl == nil {
		for _, l := range limits {
			st.Limits = append(st.Limits, LimitState{Limit: l, NextFree: now})
		}
		return st, nil
	}
	for _, e := range kl.entries {
		switch {
		case e.state == pending:
			st.Queued++
		case e.state == released:
			st.InFlight++
		}
	}
	for _, l := range kl.limits(limits, t) {
		ls := LimitState{Limit: l, NextFree: now}
		for _, e := range kl.entries {
			if e.state != pending && (e.state == released || e.at > t-int64(l.Window)) {
				ls.Used++
			}
		}
		if nth, ok := kl.nthLatest(l.Count, t, t, 0); ok && nth+int64(l.Window) > t {
			ls.NextFree = s.epoch.Add(time.Duration(nth + int64(l.Window)))
		}
		st.Limits = append(st.Limits, ls)
	}
	if kl.holdUntil > t {
		st.HoldUntil = s.epoch.Add(time.Duration(kl.holdUntil))
	}
	st.Probing = kl.probing
	if t < kl.budgetUntil {
		st.Budget, st.BudgetUntil = kl.budget, s.epoch.Add(time.Duration(kl.budgetUntil))
	}
	if len(kl.learned) > 0 && t < kl.learnedUntil {
		st.Learned, st.LearnedUntil = slices.Clone(kl.learned), s.epoch.Add(time.Duration(kl.learnedUntil))
	}
	return st, nil
}
