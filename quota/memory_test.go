package quota_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	. "github.com/ratelimit-proxy/ratelimit-proxy/quota"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota/storetest"
)

// TestConformance runs the Store contract's suite on the memory store.
func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, clock Clock) Store { return NewMemoryStore(clock) })
}

func mustLimits(t testing.TB, specs ...string) []Limit {
	t.Helper()
	var ls []Limit
	for _, s := range specs {
		l, err := ParseLimit(s)
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
	}
	return ls
}

// reserve books a slot and settles it at once when it may leave now.
func reserve(t testing.TB, s Store, req Request) Reservation {
	t.Helper()
	r, err := s.Reserve(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if r.OK && r.Delay() == 0 {
		if r, err = s.Settle(context.Background(), r, r.Now); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

func TestParseLimit(t *testing.T) {
	tests := []struct {
		in   string
		want Limit
		err  bool
	}{
		{in: "15/1s", want: Limit{15, time.Second}},
		{in: "300/1m", want: Limit{300, time.Minute}},
		{in: "10000/24h", want: Limit{10000, 24 * time.Hour}},
		{in: "350/h", want: Limit{350, time.Hour}},
		{in: " 20 / 1h ", want: Limit{20, time.Hour}},
		{in: "5/7d", want: Limit{5, 7 * 24 * time.Hour}},
		{in: "2/1m30s", want: Limit{2, 90 * time.Second}},
		{in: "10/250ms", want: Limit{10, 250 * time.Millisecond}},
		{in: "300/lol", err: true},
		{in: "300", err: true},
		{in: "0/1s", err: true},
		{in: "-1/1s", err: true},
		{in: "1.5/1s", err: true},
		{in: "10/0s", err: true},
		{in: "10/-1s", err: true},
		{in: "10/1us", err: true},
		{in: "10/400d", err: true},
		{in: "99999999999/1s", err: true},
		{in: "", err: true},
	}
	for _, tt := range tests {
		got, err := ParseLimit(tt.in)
		if tt.err {
			if err == nil {
				t.Errorf("ParseLimit(%q) = %v, want an error", tt.in, got)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseLimit(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestLimitStringRoundTrips(t *testing.T) {
	for _, s := range []string{"15/1s", "300/1m", "10000/1d", "350/1h", "10/250ms", "2/90s"} {
		l := mustLimits(t, s)[0]
		back, err := ParseLimit(l.String())
		if err != nil || back != l {
			t.Errorf("ParseLimit(%q.String() = %q) = %v, %v", s, l.String(), back, err)
		}
	}
}

func TestKeysAreIndependentAndIdleKeysAreForgotten(t *testing.T) {
	clock := storetest.NewFakeClock()
	s := NewMemoryStore(clock)
	limits := mustLimits(t, "1/1s")
	for i := range 1000 {
		r := reserve(t, s, Request{Key: fmt.Sprint("key-", i), Limits: limits})
		if !r.OK {
			t.Fatalf("key %d refused: keys must not share quota", i)
		}
	}
	if n := s.Keys(); n != 1000 {
		t.Fatalf("Keys() = %d, want 1000", n)
	}
	clock.Advance(2 * time.Minute)
	for i := range 1000 { // touch every shard so each sweeps
		reserve(t, s, Request{Key: fmt.Sprint("other-", i), Limits: limits})
	}
	if n := s.Keys(); n != 1000 {
		t.Fatalf("Keys() after the idle ones expired = %d, want 1000 (only the new ones)", n)
	}
}

func BenchmarkReserveUnderQuota(b *testing.B) {
	s := NewMemoryStore(nil)
	limits := []Limit{{Count: 1 << 30 / 1000, Window: time.Second}}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			i++
			r, _ := s.Reserve(context.Background(), Request{Key: keys[i%len(keys)], Limits: limits})
			if !r.OK {
				b.Fatal("refused")
			}
		}
	})
}

var keys = func() []string {
	ks := make([]string, 1024)
	for i := range ks {
		ks[i] = fmt.Sprintf("upstream/%064x", i)
	}
	return ks
}()

func TestHeldKeysThatNeverProbeAreForgotten(t *testing.T) {
	ctx := context.Background()
	clock := storetest.NewFakeClock()
	s := NewMemoryStore(clock)
	for i := range 100 {
		s.Hold(ctx, fmt.Sprint("held-", i), time.Second)
	}
	clock.Advance(time.Second + ProbeTimeout + time.Minute)
	for i := range 1000 {
		reserve(t, s, Request{Key: fmt.Sprint("other-", i), Limits: mustLimits(t, "1/1s")})
	}
	if n := s.Keys(); n != 1000 {
		t.Fatalf("Keys() = %d, want 1000: held keys that never probed were kept", n)
	}
}
