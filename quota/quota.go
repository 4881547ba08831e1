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

// MaxLimitCount bounds the count of one limit. Counts above ExactCount are
// kept in buckets, so the bound does not bound memory; it keeps counts in
// the range every store's arithmetic handles.
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
	// They may change from one request of a key to the next (a reload):
	// each request is judged by its own limits against the sends the store
	// holds for the key.
	Limits []Limit
	// MaxWait is the longest delay the caller accepts. Zero means the
	// request is admitted only if it may leave now (or, with Book, at the
	// slot a booking kept for it).
	MaxWait time.Duration
	// MaxQueue is how many requests of the key may be waiting for a future
	// slot, booked refusals included; a request that would have to wait
	// beyond them is refused with QueueFull.
	MaxQueue int
	// Scout asks that, while the store knows nothing the upstream reported
	// about the key (a new key, or its reported budget ran to its reset),
	// the first request go alone as a probe and the others wait for its
	// answer (EndProbe), so that no burst spends a quota someone else
	// already used.
	Scout bool
	// Book, when its Grace is set, makes a refusal keep its word: see
	// Booking.
	Book Booking
	// Transit, when set, is the longest the request may stay on its way
	// between its release and its Settle or Cancel: the caller streams
	// its body from a client and cuts it at that bound. Such a request may
	// be sent at any time in between, so the store counts it, for later
	// requests, at the latest of those times (up to each one's candidate
	// slot): the slots and refusal times it names hold even if the request
	// takes all of its transit. Zero: the request is written at once, and
	// counts as sent at each decision's time until it is settled. A store
	// that ignores Transit still never goes over; only the times it names
	// while such a request is on its way may come early.
	Transit time.Duration
}

// Booking makes refusals truthful. A request refused because every limit
// is spent until a later time (not a hold, not a full queue) is told a time
// at which a retry will be admitted, and the store keeps a slot there for
// it: Retry-After is whole seconds, so the told time is the first slot
// rounded up to a whole multiple of Round from now, and the slot waits
// Grace after it for a caller. Refusals of a key get successive slots, as
// if they had queued, and count against MaxQueue. The first request of the
// key that arrives from Early before a booked time until its Grace ends
// takes the booked slot (the store cannot tell a retry from a new caller:
// first come, first served) and waits for its time if it came early; a slot
// nobody takes lapses after Grace, so callers that never come back cost
// little.
type Booking struct {
	Round time.Duration
	Grace time.Duration
	Early time.Duration
}

// Reservation is a Store's answer, and the handle of the slot it booked.
// When OK, the request holds a slot at At and must not be released before
// it; it gives the slot back with Cancel if it is not sent. When not OK,
// nothing of the request's own was consumed and At is the earliest time at
// which a retry could be admitted at once (with Booked, the time a slot is
// kept for it).
//
// Times are the store's: Now and At come from the store's clock, and only
// their difference, Delay, means anything to the caller's clock.
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
	// Booked reports a refusal whose At is kept for a retry (Request.Book).
	Booked bool
	// Wake, when not nil, is closed when the key's state changes in a way
	// that may let this reservation go before At (the probe it waits for
	// ended, the upstream reported a new budget): the caller then calls
	// Release at once instead of waiting until At.
	Wake <-chan struct{}

	// The handle: the request's key, limits and scout flag, the slot it
	// holds in store time and its id within the key (0 when it holds
	// none), and, once settled, the send time the store recorded.
	Key    string
	Limits []Limit
	Scout  bool
	Slot   time.Time
	ID     uint64
	Sent   time.Time
}

// Delay is how long the caller must wait before releasing the request (OK),
// or before retrying (not OK). It is never negative.
func (r Reservation) Delay() time.Duration {
	return max(r.At.Sub(r.Now), 0)
}

// Store books slots for keys. Implementations must be safe for concurrent
// use. Every call takes a context whose deadline bounds it: a remote store
// returns an error rather than block past it.
//
// The life of an admitted request: Reserve books a slot; when the slot is
// in the future the caller waits until it (or until Wake), then calls
// Release, which either lets the request go or names a later slot to wait
// for (the store has learned since that earlier requests left later than
// booked); once the request has been written upstream the caller calls
// Settle with the time it was sent, or Cancel if it was never sent. Every
// OK reservation must end in one Cancel or at least one Settle.
//
// The guarantee: for every key and every limit N/W, no half-open interval
// of length W holds more than N send times, where a request counts from its
// settled send time, and a request released but not yet settled counts as
// sent at every instant until it is settled. Requests that leave at once
// are admitted in the order of Reserve calls; queued ones are released in
// slot order. Limits of up to ExactCount are exact; larger ones count sends
// in 1/BucketSlots of their window and may leave that share unused.
type Store interface {
	// Reserve books the earliest slot allowed by every limit of req, or
	// refuses without consuming anything of the request's own (a refusal
	// may book a slot for a retry: Request.Book).
	Reserve(ctx context.Context, req Request) (Reservation, error)
	// Release checks a reservation whose slot has come (or whose Wake
	// closed) against what the store knows now. The request may go when
	// the returned reservation's Delay is zero; otherwise the caller waits
	// that long and calls Release again.
	Release(ctx context.Context, r Reservation) (Reservation, error)
	// Settle records that a released request was written upstream at
	// sentAt, a time of the caller's clock (the store converts it to its
	// own). It may be called again for the same request with a later time,
	// passing the reservation Settle returned (net/http writes a request
	// again when a reused connection turned out closed): the store keeps
	// the latest. A remote store may apply it after returning; until then
	// the request counts as on its way, which is the safe side.
	Settle(ctx context.Context, r Reservation, sentAt time.Time) (Reservation, error)
	// Cancel gives back the slot of an OK reservation that was not sent.
	// Cancelling a refused reservation is harmless.
	Cancel(ctx context.Context, r Reservation) error

	// Hold keeps every request of key from leaving for d from now (a hold
	// only ever grows). When it ends, one request goes first as a probe
	// and the others wait until EndProbe, another Hold, or ProbeTimeout.
	// Hold(key, 0) restarts the probe of a key (its probe got no answer).
	Hold(ctx context.Context, key string, d time.Duration) error
	// EndProbe reports that the probe r got an answer that was not a
	// throttle: the key is open again.
	EndProbe(ctx context.Context, r Reservation) error
	// Observe records what the upstream reported about key's quota in the
	// answer to a request.
	Observe(ctx context.Context, key string, o Observation) error
}

// ExactCount is the largest limit count a store keeps exact: it remembers
// that many send times of a key. Larger limits (a daily 250000) are
// counted in BucketSlots slices of their window.
const ExactCount = 4096

// BucketSlots is how many slices the window of a limit above ExactCount is
// cut into: such a limit may leave up to 1/BucketSlots of its count unused.
const BucketSlots = 256

// ProbeTimeout is how long the other requests of a key wait for the
// outcome of a probe before another request may probe.
const ProbeTimeout = 30 * time.Second

// Observation is what an upstream said about a key's quota in one answer.
// Times are the caller's clock.
type Observation struct {
	// SentAt is when the request that got the answer was sent.
	SentAt time.Time
	// Limit, Remaining, ResetAt and Period describe the upstream's window
	// that binds first: its count (0 when not reported), what is left of
	// it (negative when unknown), when it resets (zero when unknown) and
	// its length (0 when unknown).
	//
	// The store turns them into a budget of releases until ResetAt. When
	// the upstream has counted no more than the store sent in the window
	// (no other caller is evident), the budget is the whole count less
	// those sends: the proxy uses all of the quota. When the upstream has
	// counted more, another caller spends the key too, and the budget is
	// what is left less the sends the upstream had not counted yet (sent
	// after SentAt or on their way), less Reserve of Limit. At zero the key
	// is held until ResetAt.
	Limit     int
	Remaining int
	ResetAt   time.Time
	Period    time.Duration
	Reserve   float64
	// Delay is the most a request's arrival upstream may lag its send time
	// (the window margin): the upstream's window, in arrival times, holds
	// requests sent up to Delay before it began.
	Delay time.Duration
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
	// Queued counts requests waiting for a future slot; Booked counts the
	// slots kept for refused requests' retries (Request.Book).
	Queued int
	Booked int
	// InFlight counts requests released but not yet settled.
	InFlight int
	// HoldUntil is when a hold (an upstream throttle) ends; zero if none.
	HoldUntil time.Time
	// Probing reports that the next request goes alone as a probe.
	Probing bool
	// Budget is how many more requests the upstream's report allows until
	// BudgetUntil (negative when more were sent than it allowed). Both are
	// zero when no report is in force: test BudgetUntil.
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

// MarginSharer is implemented by stores that several proxies share (the
// Redis store): the window margin one proxy learns for an upstream from
// the vendor's throttles reaches the others. Times are wall-clock; a margin
// set later replaces one set earlier.
type MarginSharer interface {
	// SharedMargin returns the margin last shared for upstream and when it
	// was set; zero values when none was.
	SharedMargin(ctx context.Context, upstream string) (time.Duration, time.Time, error)
	// ShareMargin records a margin learned for upstream at setAt.
	ShareMargin(ctx context.Context, upstream string, margin time.Duration, setAt time.Time) error
}
