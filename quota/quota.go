// Package quota is the admission engine of ratelimit-proxy: it decides when a
// request of a key may leave so that, for every limit N/W of that key, no more
// than N requests are released in any interval of length W.
//
// The engine knows keys, limits and time; it knows nothing of HTTP. Keys are
// opaque strings chosen by the caller (the proxy uses a fingerprint of the
// credential, never the credential itself). Time comes from the Store's Clock,
// so tests never sleep.
package quota

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Limit is at most Count requests in any interval of length Window.
type Limit struct {
	Count  int
	Window time.Duration
}

// String returns the limit in the form ParseLimit reads, such as "300/1m".
func (l Limit) String() string {
	return strconv.Itoa(l.Count) + "/" + formatWindow(l.Window)
}

func formatWindow(d time.Duration) string {
	switch {
	case d%(24*time.Hour) == 0:
		return strconv.FormatInt(int64(d/(24*time.Hour)), 10) + "d"
	case d%time.Hour == 0:
		return strconv.FormatInt(int64(d/time.Hour), 10) + "h"
	case d%time.Minute == 0:
		return strconv.FormatInt(int64(d/time.Minute), 10) + "m"
	case d%time.Second == 0:
		return strconv.FormatInt(int64(d/time.Second), 10) + "s"
	}
	return d.String()
}

// MaxLimitCount bounds the count of one limit. The memory store keeps one
// timestamp per admitted request inside the longest window of a key, so the
// bound also bounds the memory of one key.
const MaxLimitCount = 10_000_000

// ParseLimit reads a limit written as COUNT/WINDOW, where WINDOW is a Go
// duration ("1s", "1m30s", "24h"), a bare unit meaning one of it ("s", "m",
// "h", "d") or a number of days ("7d"). Examples: "15/1s", "300/1m",
// "10000/24h", "350/h".
func ParseLimit(s string) (Limit, error) {
	count, window, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return Limit{}, fmt.Errorf("limit %q: want COUNT/WINDOW, such as 300/1m", s)
	}
	n, err := strconv.Atoi(strings.TrimSpace(count))
	if err != nil || n < 1 || n > MaxLimitCount {
		return Limit{}, fmt.Errorf("limit %q: count must be a whole number from 1 to %d", s, MaxLimitCount)
	}
	w, err := parseWindow(strings.TrimSpace(window))
	if err != nil {
		return Limit{}, fmt.Errorf("limit %q: %w", s, err)
	}
	return Limit{Count: n, Window: w}, nil
}

func parseWindow(s string) (time.Duration, error) {
	switch s {
	case "s":
		return time.Second, nil
	case "m":
		return time.Minute, nil
	case "h":
		return time.Hour, nil
	case "d":
		return 24 * time.Hour, nil
	}
	var d time.Duration
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n < 1 || n > 366 {
			return 0, fmt.Errorf("window %q: days must be a whole number from 1 to 366", s)
		}
		d = time.Duration(n) * 24 * time.Hour
	} else {
		var err error
		d, err = time.ParseDuration(s)
		if err != nil {
			return 0, fmt.Errorf("window %q: want a duration such as 1s, 1m, 24h or 7d", s)
		}
	}
	if d < time.Millisecond || d > 366*24*time.Hour {
		return 0, fmt.Errorf("window %q: must be from 1ms to 366d", s)
	}
	return d, nil
}

// Request asks a Store for a slot.
type Request struct {
	// Key names the bucket; requests with equal keys share every limit.
	Key string
	// Limits must all admit the request. An empty list admits at once.
	Limits []Limit
	// MaxWait is the longest delay the caller accepts. Zero means the
	// request is admitted only if it may leave now.
	MaxWait time.Duration
	// MaxQueue is how many admitted requests of the key may be waiting for
	// a future slot; a request that would have to wait beyond them is
	// refused. It matters only when MaxWait > 0.
	MaxQueue int
	// Scout asks that, while the store knows nothing the upstream reported
	// about the key (a new key, or its reported budget ran to its reset),
	// the first request go alone as a probe and the others wait for its
	// answer (EndProbe), so that no burst spends a quota someone else
	// already used.
	Scout bool
}

// Reservation is a Store's answer. When OK, the request holds a slot at At
// and must not be released before it; it gives the slot back with Cancel if
// it is not sent. When not OK, nothing was consumed and At is the earliest
// time at which the same request could be admitted at once, assuming no one
// else takes the quota first.
type Reservation struct {
	OK bool
	// Now is the store's clock at the decision.
	Now time.Time
	// At is the slot (OK) or the earliest admissible time (not OK).
	At time.Time
	// Binding is the limit that set At when it is later than Now; the zero
	// Limit when the request was not delayed by a limit.
	Binding Limit
	// QueueFull reports that the request was refused because MaxQueue
	// requests of the key were already waiting.
	QueueFull bool
	// Held reports that At was set by a hold (an upstream throttle, or the
	// quota the upstream reported running out), not by a limit.
	Held bool
	// Probe reports that this request is the first to go after a hold:
	// the others wait for its outcome, which the caller reports with
	// EndProbe (success) or Hold (throttled again).
	Probe bool

	key    string
	limits []Limit
	scout  bool
	slot   int64  // store-specific: the booked time
	id     uint64 // store-specific: names the reservation within its key
}

// Delay is how long the caller must wait before releasing the request (OK),
// or before retrying (not OK). It is never negative.
func (r Reservation) Delay() time.Duration {
	return max(r.At.Sub(r.Now), 0)
}

// Store books slots for keys. Implementations must be safe for concurrent
// use.
//
// The life of an admitted request: Reserve books a slot; when the slot is
// in the future the caller waits until it, then calls Release, which either
// lets the request go or names a later slot to wait for (the store has
// learned since that earlier requests left later than booked); once the
// request has been written upstream the caller calls Settle with the time
// it was sent, or Cancel if it was never sent. Every OK reservation must
// end in exactly one Settle or Cancel.
//
// The guarantee: for every key and every limit N/W, no half-open interval
// of length W holds more than N send times, where a request counts from its
// settled send time, and a request released but not yet settled counts as
// sent at every instant until it is settled. Requests that leave at once
// are admitted in the order of Reserve calls; queued ones are released in
// slot order.
type Store interface {
	// Reserve books the earliest slot allowed by every limit of req, or
	// refuses without consuming anything.
	Reserve(ctx context.Context, req Request) (Reservation, error)
	// Release checks a reservation whose slot has come against what the
	// store knows now. The request may go when the returned reservation's
	// Delay is zero; otherwise the caller waits that long and calls Release
	// again.
	Release(ctx context.Context, r Reservation) (Reservation, error)
	// Settle records when a released request was written upstream.
	Settle(ctx context.Context, r Reservation, sentAt time.Time) error
	// Cancel gives back the slot of an OK reservation that was not sent.
	// Cancelling a refused reservation is harmless.
	Cancel(ctx context.Context, r Reservation) error

	// Hold keeps every request of key from leaving for d from now (a hold
	// only ever grows). When it ends, one request goes first as a probe
	// and the others wait until EndProbe, another Hold, or ProbeTimeout.
	Hold(ctx context.Context, key string, d time.Duration) error
	// EndProbe reports that the probe r got an answer that was not a
	// throttle: the key is open again.
	EndProbe(ctx context.Context, r Reservation) error
	// Observe records what the upstream reported about key's quota in the
	// answer to a request sent at o.SentAt.
	Observe(ctx context.Context, key string, o Observation) error
}

// ProbeTimeout is how long the other requests of a key wait for the
// outcome of a probe before another request may probe.
const ProbeTimeout = 30 * time.Second

// Observation is what an upstream said about a key's quota in one answer.
type Observation struct {
	// SentAt is when the request that got the answer was sent.
	SentAt time.Time
	// Remaining is how many requests the upstream will still accept until
	// ResetIn; negative when unknown. The store subtracts the requests it
	// sent after SentAt (the upstream had not counted them yet) and Reserve,
	// and holds the key until the reset once nothing is left.
	Remaining int
	Reserve   int
	ResetIn   time.Duration
	// Limits are windows the upstream reported; they apply to the key, in
	// addition to the caller's limits (or instead of them when Replace),
	// for KeepFor.
	Limits  []Limit
	Replace bool
	KeepFor time.Duration
}

// Clock tells the time. Tests inject a fake one.
type Clock interface {
	Now() time.Time
}

// SystemClock is the real clock.
type SystemClock struct{}

// Now returns time.Now().
func (SystemClock) Now() time.Time { return time.Now() }

// ErrNoKey is returned for a Request without a Key.
var ErrNoKey = errors.New("quota: request has no key")

// KeyState is what a store knows about one key at Now, for operators (the
// quota API and the status page). It is a snapshot: it may be stale as soon
// as it is returned.
type KeyState struct {
	Now time.Time
	// Limits are the limits in force for the key: the caller's, with the
	// windows the upstream reported (Learned) on top or instead.
	Limits []LimitState
	// Queued counts requests booked for a future slot.
	Queued int
	// InFlight counts requests released but not yet settled.
	InFlight int
	// HoldUntil is when a hold (an upstream throttle) ends; zero if none.
	HoldUntil time.Time
	// Probing reports that the next request goes alone as a probe.
	Probing bool
	// Budget is how many more requests the upstream's report allows until
	// BudgetUntil; -1 when no report is in force.
	Budget      int
	BudgetUntil time.Time
	// Learned are the windows the upstream reported, in force until
	// LearnedUntil.
	Learned      []Limit
	LearnedUntil time.Time
}

// LimitState is the use of one limit of a key.
type LimitState struct {
	Limit Limit
	// Used counts the requests sent (or on their way) in the window that
	// ends at KeyState.Now.
	Used int
	// NextFree is the earliest time at which one more request could leave
	// under this limit alone: KeyState.Now when it could leave now.
	NextFree time.Time
}

// Inspector is implemented by stores that can describe a key.
type Inspector interface {
	// Inspect returns the state of key under limits (the caller's limits
	// for it). A key the store does not know is returned empty.
	Inspect(ctx context.Context, key string, limits []Limit) (KeyState, error)
}
