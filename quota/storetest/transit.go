package storetest

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
)

// transitKeepsNamedTimesTrue: a request whose body streams from a slow
// client is on its way until its last byte leaves, which its caller bounds
// (Request.Transit). The time a refusal names while it is on its way, and
// the slot of a request queued behind it, hold even when it takes all of
// its transit (issue 12: a trickling body kept its key busy for 20 s while
// refusals said Retry-After: 1).
func transitKeepsNamedTimesTrue(t *testing.T, e *env) {
	perSecond := limits(t, "1/1s")
	const transit = 10 * time.Second
	book := quota.Booking{Round: time.Second, Grace: time.Second, Early: 250 * time.Millisecond}
	for _, tt := range []struct {
		name   string
		sentAt time.Duration // when the slow request is settled, after its release
	}{
		{"it takes all of its transit", transit},
		{"it is sent early", 3 * time.Second},
	} {
		key := "k/" + tt.name
		start := e.clock.Now()
		slow := e.book(quota.Request{Key: key, Limits: perSecond, Transit: transit})
		if !slow.OK || slow.Delay() != 0 {
			t.Fatalf("%s: the slow request: %+v, want released at once", tt.name, slow)
		}
		e.clock.Advance(500 * time.Millisecond)
		refused := e.book(quota.Request{Key: key, Limits: perSecond, Book: book, MaxQueue: 10})
		if refused.OK || !refused.Booked {
			t.Fatalf("%s: a request while the slow one is on its way: %+v, want a booked refusal", tt.name, refused)
		}
		if want := start.Add(transit + time.Second); refused.At.Before(want) {
			t.Fatalf("%s: refusal names %v after the slow request's release, want no earlier than %v (its transit, then the window)", tt.name, refused.At.Sub(start), want.Sub(start))
		}
		queued := e.book(quota.Request{Key: key, Limits: perSecond, MaxWait: time.Minute, MaxQueue: 10})
		if !queued.OK || queued.Slot.Before(refused.At.Add(time.Second)) {
			t.Fatalf("%s: a queued request: %+v, want a slot a window after the booked one", tt.name, queued)
		}
		e.clock.Set(start.Add(tt.sentAt))
		e.settle(slow, e.clock.Now())
		e.clock.Set(refused.At)
		retry := e.book(quota.Request{Key: key, Limits: perSecond, Book: book, MaxQueue: 10})
		if !retry.OK || retry.Delay() != 0 {
			t.Errorf("%s: the retry at the named time: %+v, want admitted at once", tt.name, retry)
		}
		e.settle(retry, e.clock.Now())
		e.clock.Set(queued.At)
		if r := e.release(queued); r.Delay() != 0 {
			t.Errorf("%s: the queued request at its slot: waits %v more, want released", tt.name, r.Delay())
		}
		e.cancel(queued)
	}
}

// transitNeverLetsTheWindowOverflow: requests queued behind one in transit
// never leave within a window of its send, however late in its transit it
// is sent.
func transitNeverLetsTheWindowOverflow(t *testing.T, e *env) {
	ls := limits(t, "2/1s")
	for n, sentAfter := range []time.Duration{0, 500 * time.Millisecond, 2500 * time.Millisecond, 5 * time.Second} {
		key := fmt.Sprint("k", n)
		var sends []time.Time
		first := e.reserve(quota.Request{Key: key, Limits: ls}) // settled at once
		sends = append(sends, first.Sent)
		slow := e.book(quota.Request{Key: key, Limits: ls, Transit: 5 * time.Second})
		slowAt := e.clock.Now().Add(sentAfter)
		var queued []quota.Reservation
		for range 6 {
			queued = append(queued, e.book(quota.Request{Key: key, Limits: ls, MaxWait: time.Minute, MaxQueue: 10}))
		}
		settleSlow := func(before time.Time) {
			if !slowAt.IsZero() && !slowAt.After(before) {
				e.clock.Set(slowAt)
				e.settle(slow, slowAt)
				sends = append(sends, slowAt)
				slowAt = time.Time{}
			}
		}
		for i, r := range queued {
			for try := 0; ; try++ {
				if try == 100 {
					t.Fatalf("queued request %d still not released after 100 checks: %+v", i, r)
				}
				settleSlow(r.At)
				if r.At.After(e.clock.Now()) {
					e.clock.Set(r.At)
				}
				if r = e.release(r); r.Delay() == 0 {
					break
				}
			}
			e.settle(r, e.clock.Now())
			sends = append(sends, e.clock.Now())
		}
		settleSlow(e.clock.Now().Add(time.Hour))
		slices.SortFunc(sends, func(a, b time.Time) int { return a.Compare(b) })
		for i := 2; i < len(sends); i++ {
			if d := sends[i].Sub(sends[i-2]); d < time.Second {
				t.Errorf("slow request sent %v after its release: sends %d and %d are %v apart, 3 within a 1s window of a 2/1s limit", sentAfter, i-2, i, d)
			}
		}
		e.clock.Advance(time.Minute)
	}
}

// transitCountsForARetryThatTakesItsBooking: a request that takes a
// booked slot (the retry of a refusal) and streams its body counts for its
// whole transit too.
func transitCountsForARetryThatTakesItsBooking(t *testing.T, e *env) {
	perSecond := limits(t, "1/1s")
	const transit = 10 * time.Second
	book := quota.Booking{Round: time.Second, Grace: time.Second, Early: 250 * time.Millisecond}
	e.reserve(quota.Request{Key: "k", Limits: perSecond})
	refused := e.book(quota.Request{Key: "k", Limits: perSecond, Book: book, MaxQueue: 10})
	if refused.OK || !refused.Booked {
		t.Fatalf("a second request in the window: %+v, want a booked refusal", refused)
	}
	e.clock.Set(refused.At)
	retry := e.book(quota.Request{Key: "k", Limits: perSecond, Book: book, MaxQueue: 10, Transit: transit})
	if !retry.OK || retry.Delay() != 0 {
		t.Fatalf("the retry at the named time: %+v, want admitted at once", retry)
	}
	next := e.book(quota.Request{Key: "k", Limits: perSecond, Book: book, MaxQueue: 10})
	if want := refused.At.Add(transit + time.Second); next.OK || next.At.Before(want) {
		t.Errorf("a request while the retry streams: %+v, want refused until %v after the retry (its transit, then the window), not %v",
			next, want.Sub(refused.At), next.At.Sub(refused.At))
	}
}
