package quota_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	. "github.com/ratelimit-proxy/ratelimit-proxy/quota"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota/storetest"
)

// TestMaxKeys is the key bound of the memory store (issue 12: 30,000 random
// keys were kept a day): a key that still holds sends is never forgotten,
// so "never over" holds for it whatever keys come; empty keys are forgotten
// as soon as room is needed; with none empty a new key is refused with the
// time one may be, and a retry then succeeds.
func TestMaxKeys(t *testing.T) {
	const max = 16
	const roomEvery = time.Second
	ctx := context.Background()
	perMinute := mustLimits(t, "1/1m")
	tests := []struct {
		name string
		run  func(t *testing.T, clock *storetest.FakeClock, s *MemoryStore)
	}{
		{"a full store refuses a new key and names when one is empty", func(t *testing.T, clock *storetest.FakeClock, s *MemoryStore) {
			fill(t, s, max, perMinute)
			clock.Advance(10 * time.Second)
			_, err := s.Reserve(ctx, Request{Key: "new", Limits: perMinute})
			var kl *KeyLimitError
			if !errors.As(err, &kl) || !errors.Is(err, ErrTooManyKeys) {
				t.Fatalf("a new key in a full store: %v, want a *KeyLimitError", err)
			}
			if kl.Max != max || kl.Delay() != 50*time.Second {
				t.Errorf("refusal names max %d and a delay of %v; want %d and 50s (the first key's window ends then)", kl.Max, kl.Delay(), max)
			}
			if s.Keys() != max {
				t.Errorf("%d keys held, want %d", s.Keys(), max)
			}
			clock.Advance(kl.Delay())
			if r := reserve(t, s, Request{Key: "new", Limits: perMinute}); !r.OK {
				t.Errorf("retry at the named time: %+v, want admitted", r)
			}
		}},
		{"keys that hold sends keep them: never over", func(t *testing.T, clock *storetest.FakeClock, s *MemoryStore) {
			fill(t, s, max, perMinute)
			for i := range 1000 {
				clock.Advance(time.Millisecond)
				s.Reserve(ctx, Request{Key: fmt.Sprintf("flood-%d", i), Limits: perMinute})
			}
			for i := range max {
				r := reserve(t, s, Request{Key: fmt.Sprintf("k%d", i), Limits: perMinute})
				if r.OK {
					t.Fatalf("key k%d admitted a second request within its 1/1m window after a flood of new keys", i)
				}
			}
		}},
		{"empty keys are forgotten at once, without waiting for the sweep", func(t *testing.T, clock *storetest.FakeClock, s *MemoryStore) {
			// Windows shorter than the minute sweep: only making room
			// can forget them in time.
			halfMinute := mustLimits(t, "1/30s")
			fill(t, s, max, halfMinute)
			clock.Advance(30 * time.Second) // every window has passed: the keys are empty
			for i := range max {
				if r := reserve(t, s, Request{Key: fmt.Sprintf("second-%d", i), Limits: halfMinute}); !r.OK {
					t.Fatalf("new key %d refused while the store held only empty keys: %+v", i, r)
				}
			}
			if s.Keys() != max {
				t.Errorf("%d keys held, want %d", s.Keys(), max)
			}
		}},
		{"a full store still serves the keys it holds", func(t *testing.T, clock *storetest.FakeClock, s *MemoryStore) {
			fill(t, s, max, perMinute)
			s.Reserve(ctx, Request{Key: "new", Limits: perMinute})
			clock.Advance(time.Minute)
			if r := reserve(t, s, Request{Key: "k0", Limits: perMinute}); !r.OK {
				t.Errorf("a held key refused in a full store: %+v", r)
			}
		}},
		{"concurrent new keys never exceed the bound", func(t *testing.T, clock *storetest.FakeClock, s *MemoryStore) {
			var wg sync.WaitGroup
			for g := range 8 {
				wg.Go(func() {
					for i := range 50 {
						s.Reserve(ctx, Request{Key: fmt.Sprintf("g%d-%d", g, i), Limits: perMinute})
					}
				})
			}
			wg.Wait()
			if n := s.Keys(); n != max {
				t.Errorf("%d keys held after 400 concurrent new keys, want the bound %d", n, max)
			}
		}},
		{"a flood passes over the keys once per period, not once per request", func(t *testing.T, clock *storetest.FakeClock, s *MemoryStore) {
			// Each key holds a request on its way; cancelling them empties
			// the keys, which only a new pass finds.
			var onWay []Reservation
			for i := range max {
				r, err := s.Reserve(ctx, Request{Key: fmt.Sprintf("k%d", i), Limits: perMinute})
				if err != nil || !r.OK {
					t.Fatalf("filling: %+v %v", r, err)
				}
				onWay = append(onWay, r)
			}
			if _, err := s.Reserve(ctx, Request{Key: "flood-0", Limits: perMinute}); !errors.Is(err, ErrTooManyKeys) {
				t.Fatalf("a new key in a full store: %v", err)
			}
			for _, r := range onWay {
				s.Cancel(ctx, r)
			}
			clock.Advance(roomEvery - time.Millisecond)
			if _, err := s.Reserve(ctx, Request{Key: "flood-1", Limits: perMinute}); !errors.Is(err, ErrTooManyKeys) {
				t.Fatalf("a new key within a period of the last pass: %v, want refused without a pass", err)
			}
			clock.Advance(time.Millisecond)
			if r := reserve(t, s, Request{Key: "flood-2", Limits: perMinute}); !r.OK {
				t.Fatalf("a new key a period after the last pass: %+v, want admitted (the pass finds the emptied keys)", r)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := storetest.NewFakeClock()
			tt.run(t, clock, NewMemoryStore(clock, WithMaxKeys(max)))
		})
	}
}

// fill admits and settles one request of each of n keys, k0 to k(n-1).
func fill(t *testing.T, s *MemoryStore, n int, limits []Limit) {
	t.Helper()
	for i := range n {
		if r := reserve(t, s, Request{Key: fmt.Sprintf("k%d", i), Limits: limits}); !r.OK {
			t.Fatalf("filling: key k%d refused: %+v", i, r)
		}
	}
}
