package quota

import (
	"math"
	"slices"
	"sort"
	"time"
)

// This file holds the decisions about one key, on plain numbers: times are
// nanoseconds in the store's time base. A store locks the key, converts
// times, and calls these; the Redis store's Lua scripts do the same steps.

// noTime marks "no such time".
const noTime = math.MinInt64

// minHistory is how many send times a key keeps even when its limits need
// fewer: the upstream's reports are read against them (Observe).
const minHistory = 64

// staleOnItsWay bounds how long a released request that is never settled
// or cancelled counts as on its way: the caller must end every
// reservation, and this only bounds the damage when one does not.
const staleOnItsWay = int64(10 * time.Minute)

// refusalWait is the time a refused request is told to come back when the
// key waits for a probe's outcome, which has no known time.
const refusalWait = int64(time.Second)

type entryState uint8

const (
	queued   entryState = iota // booked for its slot, waiting for it
	booking                    // kept for a refused caller's retry
	onItsWay                   // released, not yet settled
)

// entry is a request of the key that is not settled: queued for its slot,
// a booking kept for a refused caller, or on its way upstream.
type entry struct {
	at      int64 // the slot
	id      uint64
	from    int64 // booking: the earliest time a caller may take it
	expires int64 // booking: it lapses then; onItsWay: when it was released
	transit int64 // the longest it may stay on its way (Request.Transit)
	state   entryState
}

// keyState is everything a store holds about one key.
type keyState struct {
	// sent are settled send times, ascending: the latest histCap of them,
	// and none older than any window can reach. complete is the time from
	// which sent holds every send (earlier ones were dropped).
	sent     []int64
	histCap  int
	complete int64
	// buckets count the sends of limits above ExactCount, one log per
	// window.
	buckets []*bucketLog
	// open are the key's unsettled requests, ascending by slot.
	open []entry
	// transits counts the open entries with a transit: while there are
	// none, every open entry counts at its slot or now (nthLatest's quick
	// path).
	transits  int
	maxWindow int64
	taught    *taught // what the upstream taught; nil until it spoke
}

// taught is what a key learned from its upstream: holds after throttles,
// the probe that goes first after them, the budget its reports allow, and
// the windows they named.
type taught struct {
	holdUntil int64
	probing   bool
	probeID   uint64 // the probe on its way, or 0
	probeAt   int64

	budget      int   // releases left before budgetUntil, when active
	budgetUntil int64 // the upstream's reset; the budget is off after it
	budgetFrom  int64 // when the upstream's window began, or noTime
	// covered reports a budget the key's own limits already enforce: no
	// other caller is evident and the upstream's window is one of the
	// learned limits, which the store holds exactly, so the key is not held
	// until the upstream's reset (reported in whole seconds, often late)
	// when it runs out.
	covered  bool
	informed bool // a scout came back, or the upstream reported a budget

	learned      []Limit
	learnedUntil int64
	replace      bool

	wake chan struct{} // closed when a waiter may go earlier
}

func newKeyState() *keyState {
	return &keyState{complete: noTime, histCap: minHistory}
}

func (k *keyState) teach() *taught {
	if k.taught == nil {
		k.taught = &taught{budgetFrom: noTime}
	}
	return k.taught
}

// limitsAt returns the limits in force for a request with req at t.
func (k *keyState) limitsAt(req []Limit, t int64) []Limit {
	tg := k.taught
	if tg == nil || len(tg.learned) == 0 || t >= tg.learnedUntil {
		return req
	}
	if tg.replace {
		return tg.learned
	}
	return append(slices.Clip(req), tg.learned...)
}

// track makes room for limits: enough history for the exact ones, a bucket
// log for each window of the others.
func (k *keyState) track(limits []Limit, t int64) {
	for _, l := range limits {
		w := int64(l.Window)
		k.maxWindow = max(k.maxWindow, w)
		if l.Count <= ExactCount {
			k.histCap = max(k.histCap, l.Count)
			continue
		}
		if k.bucketsFor(w) == nil {
			b := newBucketLog(w)
			// Seed it with the sends the key remembers: a window that
			// appears later (a reload, a report) counts what is known.
			for _, s := range k.sent {
				if s > t-w {
					b.add(s, 1)
				}
			}
			k.buckets = append(k.buckets, b)
		}
	}
}

func (k *keyState) bucketsFor(window int64) *bucketLog {
	for _, b := range k.buckets {
		if b.window == window {
			return b
		}
	}
	return nil
}

// expire drops the bookings that lapsed and the requests on their way for
// too long.
func (k *keyState) expire(t int64) {
	kept := k.open[:0]
	for _, e := range k.open {
		switch {
		case e.state == booking && t >= e.expires:
		case e.state == onItsWay && t-e.expires >= staleOnItsWay+e.transit:
			if e.transit > 0 {
				k.transits--
			}
		default:
			kept = append(kept, e)
		}
	}
	clear(k.open[len(kept):])
	k.open = kept
}

// removeOpen deletes open entry i.
func (k *keyState) removeOpen(i int) {
	if k.open[i].transit > 0 {
		k.transits--
	}
	k.open = slices.Delete(k.open, i, i+1)
}

// setTransit gives open entry i the transit d.
func (k *keyState) setTransit(i int, d int64) {
	if (k.open[i].transit > 0) != (d > 0) {
		if d > 0 {
			k.transits++
		} else {
			k.transits--
		}
	}
	k.open[i].transit = d
}

// find returns the index of the open entry with slot at and id, or -1.
func (k *keyState) find(at int64, id uint64) int {
	es := k.open
	for i := sort.Search(len(es), func(i int) bool { return es[i].at >= at }); i < len(es) && es[i].at == at; i++ {
		if es[i].id == id {
			return i
		}
	}
	return -1
}

// insertOpen adds e in slot order, after entries with the same slot.
func (k *keyState) insertOpen(e entry) int {
	i := sort.Search(len(k.open), func(i int) bool { return k.open[i].at > e.at })
	k.open = slices.Insert(k.open, i, e)
	if e.transit > 0 {
		k.transits++
	}
	return i
}

// moveOpen sets entry i's slot to at (never earlier) and keeps the order.
// It returns the entry's new index.
func (k *keyState) moveOpen(i int, at int64) int {
	e := k.open[i]
	k.removeOpen(i)
	e.at = at
	return k.insertOpen(e)
}

// nthLatest returns the n-th latest effective send time no later than c
// among the key's settled sends and open entries other than the one at
// index skip (-1 for none), where an open entry counts at its slot, or at
// t if its slot has come (a request on its way counts as sent now). ok is
// false when fewer than n qualify.
//
// An entry with a transit may be sent at any time from its slot (or its
// release) until its transit has passed: it counts at the latest of those
// times no later than c, so that a time named for a later request holds
// even if this one takes all of its transit.
func (k *keyState) nthLatest(n int, c, t int64, skip int) (int64, bool) {
	if k.transits > 0 {
		return k.nthLatestInTransit(n, c, t, skip)
	}
	es := k.open
	hi := sort.Search(len(es), func(i int) bool { return es[i].at > c })
	lo := min(sort.Search(len(es), func(i int) bool { return es[i].at > t }), hi)
	// Entries [lo, hi) count at their slots, the latest last.
	future := hi - lo
	if skip >= lo && skip < hi {
		future--
	}
	if n <= future {
		j := hi - n
		if skip >= j && skip < hi {
			j--
		}
		return es[j].at, true
	}
	// Entries [0, lo) count at t.
	due := lo
	if skip >= 0 && skip < lo {
		due--
	}
	if n <= future+due {
		return t, true
	}
	r := n - future - due
	if r <= len(k.sent) {
		return k.sent[len(k.sent)-r], true
	}
	return 0, false
}

// nthLatestInTransit is nthLatest for a key with entries in transit: it
// takes each open entry's effective time in turn.
func (k *keyState) nthLatestInTransit(n int, c, t int64, skip int) (int64, bool) {
	eff := make([]int64, 0, len(k.open))
	for i, e := range k.open {
		from := max(e.at, t) // the earliest it may still be sent
		if i == skip || from > c {
			continue
		}
		until := from
		switch {
		case e.transit == 0:
		case e.state == onItsWay:
			until = max(t, e.expires+e.transit)
		default:
			until = from + e.transit
		}
		eff = append(eff, min(until, c))
	}
	slices.Sort(eff)
	a, b := len(eff)-1, len(k.sent)-1
	for {
		var x int64
		switch {
		case a >= 0 && (b < 0 || eff[a] >= k.sent[b]):
			x = eff[a]
			a--
		case b >= 0:
			x = k.sent[b]
			b--
		default:
			return 0, false
		}
		if n--; n == 0 {
			return x, true
		}
	}
}

// openUpTo counts the open entries (other than skip) whose effective time
// is no later than c.
func (k *keyState) openUpTo(c int64, skip int) int {
	hi := sort.Search(len(k.open), func(i int) bool { return k.open[i].at > c })
	if skip >= 0 && skip < hi {
		hi--
	}
	return hi
}

// earliest returns the earliest time from cand at which the request of
// open entry skip (or a new one, skip -1, with id) may leave at t: every
// limit admits it and no hold, probe or spent budget keeps it back.
//
// slot is where the request stands in the key's plan: the earliest time
// the limits and holds allow. at is when it may leave, later than slot
// while it waits for a probe's outcome or a new budget (wakeable: such a
// wait may end early, so it does not move the request's place). binding
// names the limit that set slot, held reports that a hold or the budget
// set at.
func (k *keyState) earliest(limits []Limit, cand, t int64, skip int, id uint64, scout bool) (slot, at int64, binding Limit, held, wakeable bool) {
	for range 1 + len(k.open) + 2*BucketSlots {
		next := max(cand, k.holdGate(cand))
		for _, l := range limits {
			if f, ok := k.free(l, cand, t, skip); ok {
				next = max(next, f)
			}
		}
		if next == cand {
			break
		}
		cand = next
	}
	slot = cand
	if slot > t {
		// The limit that set the slot; on a tie the longest window.
		best := int64(noTime)
		for _, l := range limits {
			if f, ok := k.free(l, slot, t, skip); ok && (f > best || f == best && l.Window > binding.Window) {
				best, binding = f, l
			}
		}
		if tg := k.taught; tg != nil && tg.holdUntil == slot && best < slot {
			binding, held = Limit{}, true // the hold set it, not a limit
		}
	}
	at = slot
	if w := k.waitGate(slot, t, id, scout); w > slot {
		at, binding, held, wakeable = w, Limit{}, true, true
	}
	return slot, at, binding, held, wakeable
}

// free returns the earliest time at which limit l admits one more send
// no earlier than c, as far as the key's sends and open entries (other
// than skip) go; the time may be before c. ok is false when the limit does
// not constrain the request at all (fewer sends than its count).
func (k *keyState) free(l Limit, c, t int64, skip int) (int64, bool) {
	w := int64(l.Window)
	if l.Count <= ExactCount {
		nth, ok := k.nthLatest(l.Count, c, t, skip)
		return nth + w, ok
	}
	if u := k.openUpTo(c, skip); u >= l.Count {
		nth, ok := k.nthLatest(l.Count, c, t, skip)
		return nth + w, ok
	} else if b := k.bucketsFor(w); b != nil {
		return b.earliest(l.Count-u, c)
	}
	return 0, false
}

// holdGate returns the end of the key's hold when c is before it, else c.
func (k *keyState) holdGate(c int64) int64 {
	if tg := k.taught; tg != nil && c < tg.holdUntil {
		return tg.holdUntil
	}
	return c
}

// waitGate returns the earliest time from c at which request id may leave
// at t as far as the probe and the reported budget go: a time that may come
// early (the probe's outcome, a new report). With scout, a key that knows
// nothing of its upstream quota starts probing.
func (k *keyState) waitGate(c, t int64, id uint64, scout bool) int64 {
	tg := k.taught
	if scout {
		if tg != nil && tg.budgetUntil > 0 && t >= tg.budgetUntil {
			// The reported window is over: scout again, unless the key had
			// its upstream to itself.
			tg.informed = tg.covered
			tg.budgetUntil, tg.budgetFrom = 0, noTime
		}
		if tg == nil || !tg.informed && !tg.probing {
			tg = k.teach()
			tg.probing, tg.probeID = true, 0
		}
	}
	if tg == nil {
		return c
	}
	if tg.probing && tg.probeID != 0 && tg.probeID != id && t-tg.probeAt < int64(ProbeTimeout) {
		return max(c, tg.probeAt+int64(ProbeTimeout))
	}
	if c < tg.budgetUntil && tg.budget <= 0 && !tg.covered {
		return tg.budgetUntil
	}
	return c
}

// release marks open entry i as on its way at t, making it the probe when
// one is due and spending the budget. It reports whether it is the probe.
func (k *keyState) release(i int, t int64) bool {
	e := &k.open[i]
	e.state, e.expires = onItsWay, t
	tg := k.taught
	if tg == nil {
		return false
	}
	probe := false
	if tg.probing && (tg.probeID == 0 || t-tg.probeAt >= int64(ProbeTimeout)) {
		tg.probeID, tg.probeAt = e.id, t
		probe = true
	}
	if t < tg.budgetUntil {
		tg.budget--
	}
	return probe
}

// wakeWaiters tells the requests waiting for a probe or a budget to look
// again.
func (k *keyState) wakeWaiters() {
	if tg := k.taught; tg != nil && tg.wake != nil {
		close(tg.wake)
		tg.wake = nil
	}
}

// wakeChan returns the channel closed by the next wakeWaiters.
func (k *keyState) wakeChan() <-chan struct{} {
	tg := k.teach()
	if tg.wake == nil {
		tg.wake = make(chan struct{})
	}
	return tg.wake
}

// waiting counts the open entries that hold a future place in the key's
// queue: queued requests and bookings.
func (k *keyState) waiting() int {
	n := 0
	for _, e := range k.open {
		if e.state != onItsWay {
			n++
		}
	}
	return n
}

// lastBooked is the latest slot of a queued request or booking, or noTime.
func (k *keyState) lastBooked() int64 {
	for i := len(k.open) - 1; i >= 0; i-- {
		if k.open[i].state != onItsWay {
			return k.open[i].at
		}
	}
	return noTime
}

// takeBooking finds the booking a request arriving at t takes: the
// earliest one whose time, less its early allowance, has come. It returns
// its index, or -1.
func (k *keyState) takeBooking(t int64) int {
	for i, e := range k.open {
		if e.state == booking && e.from <= t {
			return i
		}
	}
	return -1
}

// addSent records a send at x in the history and the bucket logs.
func (k *keyState) addSent(x int64) {
	for _, b := range k.buckets {
		b.add(x, 1)
	}
	i := sort.Search(len(k.sent), func(i int) bool { return k.sent[i] > x })
	if len(k.sent) >= k.histCap {
		if i == 0 {
			k.complete = max(k.complete, x+1) // older than all it keeps
			return
		}
		k.complete = max(k.complete, k.sent[0]+1)
		copy(k.sent, k.sent[1:i])
		k.sent[i-1] = x
		return
	}
	k.sent = slices.Insert(k.sent, i, x)
}

// moveSent moves a recorded send from prev to x (later).
func (k *keyState) moveSent(prev, x int64) {
	for _, b := range k.buckets {
		b.add(prev, -1)
		b.add(x, 1)
	}
	i := sort.Search(len(k.sent), func(i int) bool { return k.sent[i] >= prev })
	if i < len(k.sent) && k.sent[i] == prev {
		k.sent = slices.Delete(k.sent, i, i+1)
		k.sent = slices.Insert(k.sent, sort.Search(len(k.sent), func(i int) bool { return k.sent[i] > x }), x)
	}
}

// recentSends is how long send times are kept even beyond every window:
// an upstream's report is read against the sends made after the request it
// answers (Observe).
const recentSends = int64(10 * time.Second)

// prune drops the send times no window reaching t can contain, keeping
// the recent ones and those of the upstream's current window for Observe.
func (k *keyState) prune(t int64) {
	keep := t - max(k.maxWindow, recentSends)
	if tg := k.taught; tg != nil && t < tg.budgetUntil && tg.budgetFrom != noTime {
		keep = min(keep, tg.budgetFrom)
	}
	i := sort.Search(len(k.sent), func(i int) bool { return k.sent[i] > keep })
	if i > 0 {
		k.complete = max(k.complete, k.sent[i-1]+1)
		k.sent = slices.Delete(k.sent, 0, i)
		if cap(k.sent) > 4*len(k.sent)+minHistory {
			k.sent = slices.Clone(k.sent) // give back what a burst grew
		}
	}
	for _, b := range k.buckets {
		b.trim(t)
	}
}

// idle reports a key that holds nothing any decision after t could need.
func (k *keyState) idle(t int64) bool {
	if len(k.open) > 0 || len(k.sent) > 0 && k.sent[len(k.sent)-1] > t-k.maxWindow {
		return false
	}
	for _, b := range k.buckets {
		if !b.empty() {
			return false
		}
	}
	if tg := k.taught; tg != nil {
		// A key still probing long after its hold, with nothing on its
		// way, sent nothing since: it may go (it starts again as a new
		// key does, with a scout).
		probeLive := tg.probing && t < tg.holdUntil+int64(ProbeTimeout)
		if t < tg.holdUntil || probeLive || t < tg.budgetUntil || t < tg.learnedUntil {
			return false
		}
	}
	return true
}

// idleFrom returns the earliest time from t at which the key would be
// idle if no request of it came: its queued requests leaving at their
// slots, its bookings lapsing, its holds, budget and learned windows
// ending. It mirrors idle.
func (k *keyState) idleFrom(t int64) int64 {
	at := t
	if n := len(k.sent); n > 0 {
		at = max(at, k.sent[n-1]+k.maxWindow)
	}
	for _, e := range k.open {
		if e.state == booking {
			at = max(at, e.expires)
		} else {
			at = max(at, max(e.at, t)+k.maxWindow)
		}
	}
	for _, b := range k.buckets {
		if n := len(b.slots); n > 0 {
			at = max(at, (b.slots[n-1].index+1)*b.width+b.window)
		}
	}
	if tg := k.taught; tg != nil {
		at = max(at, tg.holdUntil, tg.budgetUntil, tg.learnedUntil)
		if tg.probing {
			at = max(at, tg.holdUntil+int64(ProbeTimeout))
		}
	}
	return at
}

// observe applies an upstream report received at t for a request sent at
// sentAt; the upstream's window resets at until (all in store time).
func (k *keyState) observe(o Observation, t, sentAt, until int64) {
	tg := k.teach()
	from := int64(noTime) // when the upstream's window began
	switch {
	case o.Period > 0:
		// Upstreams report resets in whole seconds, rounded either way:
		// the window may have begun up to a second earlier, and it holds
		// requests sent up to Delay before that. Counting those sends too
		// errs on the safe side (fewer left).
		from = until - int64(o.Period) - int64(time.Second) - int64(o.Delay)
		k.maxWindow = max(k.maxWindow, int64(o.Period))
	case tg.budgetUntil > 0 && tg.budgetUntil <= t:
		from = tg.budgetUntil // the previous report's reset began this window
	}
	onWay, onWayBefore := 0, 0
	for _, e := range k.open {
		if e.state == onItsWay {
			onWay++
			if e.expires <= sentAt {
				onWayBefore++
			}
		}
	}
	var budget int
	covered := false
	sent, counted, known := k.sentIn(from, sentAt, t)
	sent += onWay
	counted += onWayBefore
	reserve := 0
	if o.Limit > 0 {
		reserve = int(math.Ceil(o.Reserve * float64(o.Limit)))
	}
	switch {
	case known && o.Limit > 0 && o.Limit-o.Remaining <= sent:
		// The upstream counted no more than the store sent: no other
		// caller is evident, so all of the quota is ours.
		budget = o.Limit - sent
		for _, l := range o.Limits {
			covered = covered || o.Period > 0 && l.Count <= o.Limit && int64(l.Window) >= int64(o.Period)
		}
	case known:
		// Another caller spends the key too: what is left, less what the
		// upstream had not counted yet, less the reserve.
		budget = o.Remaining - (sent - counted) - reserve
	default:
		// The store cannot count its sends in the upstream's window: what
		// is left less the sends after this one, and the reserve, since
		// another caller cannot be ruled out.
		after := onWay - onWayBefore
		after += len(k.sent) - sort.Search(len(k.sent), func(i int) bool { return k.sent[i] > sentAt })
		budget = o.Remaining - after - reserve
	}
	tg.informed = true
	if t >= tg.budgetUntil || until > tg.budgetUntil+int64(time.Second) {
		tg.budget, tg.budgetUntil, tg.budgetFrom, tg.covered = budget, until, from, covered // a new upstream window
	} else {
		tg.budget = min(tg.budget, budget)
		tg.covered = tg.covered && covered
	}
	k.wakeWaiters()
}

// sentIn counts the settled sends from from to t, and those up to sentAt;
// known is false when the store cannot count them (it dropped sends since
// from, or from is unknown).
func (k *keyState) sentIn(from, sentAt, t int64) (all, upTo int, known bool) {
	if from == noTime {
		return 0, 0, false
	}
	if k.complete <= from {
		lo := sort.Search(len(k.sent), func(i int) bool { return k.sent[i] >= from })
		mid := sort.Search(len(k.sent), func(i int) bool { return k.sent[i] > sentAt })
		return len(k.sent) - lo, max(mid-lo, 0), true
	}
	// A bucket log long enough counts them, rounded the safe way: all
	// over (every slot that overlaps), up to sentAt under (only slots that
	// end by then).
	for _, b := range k.buckets {
		if b.window >= t-from {
			return b.countFrom(from), b.countEndingBy(from, sentAt), true
		}
	}
	return 0, 0, false
}

// bucketLog counts the sends of a key in BucketSlots slices of a window:
// the exact times of a daily limit of 250000 would take megabytes, these
// counts take a few kilobytes at most, one slot per slice that saw a send.
type bucketLog struct {
	window int64
	width  int64
	slots  []bucketSlot // ascending by index, none empty
}

type bucketSlot struct {
	index int64 // the slice [index*width, (index+1)*width)
	count int64
}

func newBucketLog(window int64) *bucketLog {
	return &bucketLog{window: window, width: (window + BucketSlots - 1) / BucketSlots}
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

// add counts delta sends at x.
func (b *bucketLog) add(x int64, delta int64) {
	j := floorDiv(x, b.width)
	i := sort.Search(len(b.slots), func(i int) bool { return b.slots[i].index >= j })
	if i < len(b.slots) && b.slots[i].index == j {
		b.slots[i].count += delta
		if b.slots[i].count <= 0 {
			b.slots = slices.Delete(b.slots, i, i+1)
		}
		return
	}
	if delta > 0 {
		b.slots = slices.Insert(b.slots, i, bucketSlot{index: j, count: delta})
	}
}

// trim drops the slots no window reaching t overlaps.
func (b *bucketLog) trim(t int64) {
	j0 := floorDiv(t-b.window, b.width)
	i := sort.Search(len(b.slots), func(i int) bool { return b.slots[i].index >= j0 })
	if i > 0 {
		b.slots = slices.Delete(b.slots, 0, i)
	}
}

func (b *bucketLog) empty() bool { return len(b.slots) == 0 }

// earliest returns the earliest time from c at which the window ending
// then holds fewer than room counted sends, counting a slot whole while
// any of it is inside the window (so never fewer than were sent). ok is
// false when the window holds fewer at c already.
func (b *bucketLog) earliest(room int, c int64) (int64, bool) {
	j0 := floorDiv(c-b.window, b.width)
	var sum int64
	for i := len(b.slots) - 1; i >= 0 && b.slots[i].index >= j0; i-- {
		s := b.slots[i]
		if sum+s.count > int64(room-1) {
			// This slot and every older one must leave the window.
			return (s.index+1)*b.width + b.window, true
		}
		sum += s.count
	}
	return 0, false
}

// countFrom counts the sends in slots that end after from.
func (b *bucketLog) countFrom(from int64) int {
	n := int64(0)
	for _, s := range b.slots {
		if (s.index+1)*b.width > from {
			n += s.count
		}
	}
	return int(n)
}

// countEndingBy counts the sends in slots that lie within [from, to].
func (b *bucketLog) countEndingBy(from, to int64) int {
	n := int64(0)
	for _, s := range b.slots {
		if s.index*b.width >= from && (s.index+1)*b.width <= to {
			n += s.count
		}
	}
	return int(n)
}
