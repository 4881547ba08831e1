package signals

import (
	"fmt"
	"net/http"
	"strconv"
	"testing"
	"time"
)

// TestAbsoluteResetsEndAtTheUpstreamsInstant: an upstream whose clock is
// skew ahead of ours answers at an instant with a fraction of a second,
// sends Date in whole seconds and an absolute reset; we read the answer
// transit later. The local instant the wait ends (now + wait) is never
// before the upstream's reset, within 100 ms after it when the clocks
// agree and within 1 s when the upstream's clock is 30 s off either way.
// A skew under a second is below what Date can show: the clocks are taken
// to agree, and a clock that far behind ours ends the wait that much early.
func TestAbsoluteResetsEndAtTheUpstreamsInstant(t *testing.T) {
	const transit = 5 * time.Millisecond
	base := time.Date(2026, 11, 24, 6, 0, 0, 0, time.UTC) // the upstream's clock, whole second
	forms := []struct {
		name  string
		ahead time.Duration // the reset, after base on the upstream's clock
		hdr   func(reset time.Time) http.Header
	}{
		{"X-RateLimit-Reset epoch seconds", 3 * time.Second, func(r time.Time) http.Header {
			return hdr("X-RateLimit-Remaining", "0", "X-RateLimit-Reset", strconv.FormatInt(r.Unix(), 10))
		}},
		{"X-RateLimit-Reset epoch milliseconds", 2500 * time.Millisecond, func(r time.Time) http.Header {
			return hdr("X-RateLimit-Reset", strconv.FormatInt(r.UnixMilli(), 10))
		}},
		{"Retry-After HTTP-date", 4 * time.Second, func(r time.Time) http.Header {
			return hdr("Retry-After", r.Format(http.TimeFormat))
		}},
		{"RFC 3339 (Anthropic)", 1750 * time.Millisecond, func(r time.Time) http.Header {
			return hdr("anthropic-ratelimit-requests-remaining", "0", "anthropic-ratelimit-requests-reset", r.Format(time.RFC3339Nano))
		}},
	}
	clocks := []struct {
		name   string
		skew   time.Duration // upstream clock minus ours
		early  time.Duration // how early the wait may end
		within time.Duration // how late it may end
	}{
		{"clocks agree", 0, 0, 100 * time.Millisecond},
		{"upstream 30s ahead", 30 * time.Second, 0, time.Second},
		{"upstream 30s behind", -30 * time.Second, 0, time.Second},
		{"upstream 300ms ahead", 300 * time.Millisecond, 0, time.Second},
		{"upstream 300ms behind, unseen", -300 * time.Millisecond, 300 * time.Millisecond, time.Second},
	}
	fractions := []time.Duration{0, 1 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond, 900 * time.Millisecond}
	for _, f := range forms {
		for _, c := range clocks {
			for _, frac := range fractions {
				t.Run(fmt.Sprintf("%s/%s/answered at +%v", f.name, c.name, frac), func(t *testing.T) {
					answered := base.Add(frac) // upstream clock
					reset := base.Add(f.ahead) // upstream clock
					h := f.hdr(reset)
					h.Set("Date", base.Format(http.TimeFormat))
					now := answered.Add(-c.skew).Add(transit) // our clock
					wait, src, ok := Wait(h, nil, now, Bounds{Max: time.Hour})
					if !ok {
						t.Fatalf("no wait from %v", h)
					}
					checkEnd(t, "Wait ("+string(src)+")", now.Add(wait), reset.Add(-c.skew), c.early, c.within)
					if f.name == "Retry-After HTTP-date" {
						return // not a quota window
					}
					ws := Quota(h, now)
					if len(ws) == 0 || ws[0].Reset < 0 {
						t.Fatalf("Quota found no reset in %v: %+v", h, ws)
					}
					checkEnd(t, "Quota", now.Add(ws[0].Reset), reset.Add(-c.skew), c.early, c.within)
				})
			}
		}
	}
}

// checkEnd fails unless end lies in [want-early, want+within].
func checkEnd(t *testing.T, what string, end, want time.Time, early, within time.Duration) {
	t.Helper()
	switch late := end.Sub(want); {
	case late < -early:
		t.Errorf("%s: the wait ends %v before the upstream's reset", what, -late)
	case late > within:
		t.Errorf("%s: the wait ends %v after the upstream's reset, want at most %v", what, late, within)
	}
}

// TestResetWithoutDateIsReadOnTheLocalClock: with no Date (or one that
// does not parse) an absolute reset is read on our own clock.
func TestResetWithoutDateIsReadOnTheLocalClock(t *testing.T) {
	now := time.Date(2026, 11, 24, 6, 0, 0, 700_000_000, time.UTC)
	reset := time.Date(2026, 11, 24, 6, 0, 3, 0, time.UTC)
	for _, date := range []string{"", "yesterday"} {
		h := hdr("X-RateLimit-Remaining", "0", "X-RateLimit-Reset", strconv.FormatInt(reset.Unix(), 10))
		if date != "" {
			h.Set("Date", date)
		}
		if wait, _, _ := Wait(h, nil, now, Bounds{Max: time.Hour}); wait != 2300*time.Millisecond {
			t.Errorf("Date %q: wait %v, want 2.3s", date, wait)
		}
	}
}
