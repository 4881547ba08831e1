package proxy

import (
	"testing"
	"time"
)

// TestLearnedMarginWidensOncePerWindowUpToItsBound: each unpredicted
// throttle doubles the margin in force plus 10ms, at most once per vendor
// window and never beyond the bound it is given.
func TestLearnedMarginWidensOncePerWindowUpToItsBound(t *testing.T) {
	var m marginTuner
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	const most, every = 250 * time.Millisecond, time.Second
	for _, step := range []struct {
		after    time.Duration
		inForce  time.Duration
		want     time.Duration
		widening bool
	}{
		{0, 10 * time.Millisecond, 30 * time.Millisecond, true},
		{500 * time.Millisecond, 30 * time.Millisecond, 30 * time.Millisecond, false}, // the same window
		{time.Second, 30 * time.Millisecond, 70 * time.Millisecond, true},
		{2 * time.Second, 70 * time.Millisecond, 150 * time.Millisecond, true},
		{3 * time.Second, 150 * time.Millisecond, most, true},
		{4 * time.Second, most, most, false}, // at the bound
	} {
		got, ok := m.widen(t0.Add(step.after), step.inForce, most, every)
		if got != step.want || ok != step.widening {
			t.Errorf("at +%v from %v: widened to %v (%t), want %v (%t)", step.after, step.inForce, got, ok, step.want, step.widening)
		}
	}
	if d, _ := m.setting(); d != most {
		t.Errorf("learned %v, want the bound %v", d, most)
	}
}

// TestLearnedMarginHalvesEveryHalfLife: without another throttle the
// learned margin decays, halving every marginHalfLife, to nothing.
func TestLearnedMarginHalvesEveryHalfLife(t *testing.T) {
	var m marginTuner
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	m.widen(t0, 30*time.Millisecond, time.Second, time.Second) // learned: 70ms
	for _, tt := range []struct {
		after time.Duration
		want  time.Duration
	}{
		{0, 70 * time.Millisecond},
		{marginHalfLife, 35 * time.Millisecond},
		{2 * marginHalfLife, 17 * time.Millisecond}, // 17.5, in whole ms
		{10 * marginHalfLife, 0},
	} {
		if got := m.current(t0.Add(tt.after)); got != tt.want {
			t.Errorf("%v after the widening: %v, want %v", tt.after, got, tt.want)
		}
	}
}

// TestAppliedMarginIsTheWiderWithinAQuarterOfTheWindow: the margin a window
// gets is the configured one, or the learned one when wider, never more
// than a quarter of the window (nor less than the configured one).
func TestAppliedMarginIsTheWiderWithinAQuarterOfTheWindow(t *testing.T) {
	u := &upstream{windowMargin: 20 * time.Millisecond}
	for _, tt := range []struct {
		window, learned, want time.Duration
	}{
		{time.Second, 0, 20 * time.Millisecond},
		{time.Second, 5 * time.Millisecond, 20 * time.Millisecond},
		{time.Second, 90 * time.Millisecond, 90 * time.Millisecond},
		{time.Second, 900 * time.Millisecond, 250 * time.Millisecond},
		{time.Minute, 900 * time.Millisecond, 900 * time.Millisecond},
		{40 * time.Millisecond, time.Second, 10 * time.Millisecond},
	} {
		if got := u.marginFor(tt.window, tt.learned); got != tt.want {
			t.Errorf("window %v, learned %v: margin %v, want %v", tt.window, tt.learned, got, tt.want)
		}
	}
}
