package quota_test

import (
	"context"
	"slices"
	"testing"
	"time"

	. "github.com/ratelimit-proxy/ratelimit-proxy/quota"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota/storetest"
)

// TestTransitKeepsNamedTimesTrue: a request whose body streams from a slow
// client is on its way until its last byte leaves, which its caller bounds
// (Request.Transit). The time a refusal names while it is on its way, and
// the slot of a request queued behind it, hold even when it takes all of
// its transit (issue 12: a trickling body kept its key busy for 20 s while
// refusals said Retry-After: 1).
func TestTransitKeepsNamedTimesTrue(t *testing.T) {
	ctx := context.Background()
	perSecond := mustLimits(t, "1/1s")
	const transit = 10 * time.Second
	book := Booking{Round: time.Second, Grace: time.Second, Early: 250 * time.Millisecond}
	for _, tt := range []struct {
		name   string
		sentAt time.Duration // when the slow request is settled, after its release
	}{
		{"it takes all of its transit", transit},
		{"it is sent early", 3 * time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			clock := storetest.NewFakeClock()
			s := NewMemoryStore(clock)
			start := clock.Now()
			slow, err := s.Reserve(ctx, Request{Key: "k", Limits: perSecond, Transit: transit})
			if err != nil || !slow.OK || slow.Delay() != 0 {
				t.Fatalf("the slow request: %+v %v, want released at once", slow, err)
			}
			clock.Advance(500 * time.Millisecond)
			refused, _ := s.Reserve(ctx, Request{Key: "k", Limits: perSecond, Book: book, MaxQueue: 10})
			if refused.OK || !refused.Booked {
				t.Fatalf("a request while the slow one is on its way: %+v, want a booked refusal", refused)
			}
			if want := start.Add(transit + time.Second); refused.At.Before(want) {
				t.Fatalf("refusal names %v after the slow request's release, want no earlier than %v (its transit, then the window)", refused.At.Sub(start), want.Sub(start))
			}
			queued, _ := s.Reserve(ctx, Request{Key: "k", Limits: perSecond, MaxWait: time.Minute, MaxQueue: 10})
			if !queued.OK || queued.Slot.Before(refused.At.Add(time.Second)) {
				t.Fatalf("a queued request: %+v, want a slot a window after the booked one", queued)
			}
			clock.Set(start.Add(tt.sentAt))
			s.Settle(ctx, slow, clock.Now())
			clock.Set(refused.At)
			retry, _ := s.Reserve(ctx, Request{Key: "k", Limits: perSecond, Book: book, MaxQueue: 10})
			if !retry.OK || retry.Delay() != 0 {
				t.Errorf("the retry at the named time: %+v, want admitted at once", retry)
			}
			s.Settle(ctx, retry, clock.Now())
			clock.Set(queued.At)
			if r, _ := s.Release(ctx, queued); r.Delay() != 0 {
				t.Errorf("the queued request at its slot: waits %v more, want released", r.Delay())
			}
		})
	}
}

// TestTransitNeverLetsTheWindowOverflow: requests queued behind one in
// transit never leave within a window of its send, however late in its
// transit it is sent.
func TestTransitNeverLetsTheWindowOverflow(t *testing.T) {
	ctx := context.Background()
	limits := mustLimits(t, "2/1s")
	for _, sentAfter := range []time.Duration{0, 500 * time.Millisecond, 2500 * time.Millisecond, 5 * time.Second} {
		clock := storetest.NewFakeClock()
		s := NewMemoryStore(clock)
		var sends []time.Time
		first := reserve(t, s, Request{Key: "k", Limits: limits}) // settled at once
		sends = append(sends, first.Sent)
		slow, _ := s.Reserve(ctx, Request{Key: "k", Limits: limits, Transit: 5 * time.Second})
		slowAt := clock.Now().Add(sentAfter)
		var queued []Reservation
		for range 6 {
			r, _ := s.Reserve(ctx, Request{Key: "k", Limits: limits, MaxWait: time.Minute, MaxQueue: 10})
			queued = append(queued, r)
		}
		settleSlow := func(before time.Time) {
			if !slowAt.IsZero() && !slowAt.After(before) {
				clock.Set(slowAt)
				s.Settle(ctx, slow, slowAt)
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
				if r.At.After(clock.Now()) {
					clock.Set(r.At)
				}
				if r, _ = s.Release(ctx, r); r.Delay() == 0 {
					break
				}
			}
			s.Settle(ctx, r, clock.Now())
			sends = append(sends, clock.Now())
		}
		settleSlow(clock.Now().Add(time.Hour))
		slices.SortFunc(sends, func(a, b time.Time) int { return a.Compare(b) })
		for i := 2; i < len(sends); i++ {
			if d := sends[i].Sub(sends[i-2]); d < time.Second {
				t.Errorf("slow request sent %v after its release: sends %d and %d are %v apart, 3 within a 1s window of a 2/1s limit", sentAfter, i-2, i, d)
			}
		}
	}
}
