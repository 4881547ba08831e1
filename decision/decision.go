// Package decision holds the record of one exchange of the proxy: what was
// asked, who it counted as, what the proxy decided and what came of it.
//
// The proxy builds one Record per exchange, once, when the exchange ends,
// and hands it to its Observers: the log line (Logger), the metrics and the
// quota API (package admin) all read the same record, so they never tell
// different stories about one request.
//
// A Record never holds a credential: keys are named by their fingerprint.
package decision

import (
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
)

// Decisions, as the log line names them.
const (
	// Pass: admitted at once and sent upstream.
	Pass = "pass"
	// Queued: admitted after a wait, then sent upstream.
	Queued = "queued"
	// Rejected: over quota (or held after an upstream throttle), answered
	// with the proxy's own 429.
	Rejected = "rejected"
	// QueueFull: too many requests of the key were already waiting; the
	// proxy's own 429.
	QueueFull = "queue_full"
	// ClientGone: the client left before the upstream answered.
	ClientGone = "client_gone"
	// Unlimited: a host without a policy, forwarded as it is.
	Unlimited = "unlimited"
	// Denied: refused by policy: a host without one (unknown_hosts: deny),
	// a destination the egress guard refuses, a client that clients or
	// client_tokens refuse, an upstream's address asked for directly.
	// Error says which.
	Denied = "denied"
	// Error: the proxy could not get an answer (the upstream, or the quota
	// store, failed), or the request was not one it can serve.
	Error = "error"
	// Shutdown: still waiting for its slot at the shutdown deadline,
	// answered 503.
	Shutdown = "shutdown"
	// Capacity: refused because a bound of the proxy's resources was
	// reached (resources.max_keys, resources.max_tunnels): a 503. Error
	// names the bound.
	Capacity = "capacity"

	// Intercept: a CONNECT to a host with a policy, whose TLS the proxy
	// terminates; its requests are exchanges of their own.
	Intercept = "intercept"
	// Tunnel: a CONNECT to a host without a policy, tunnelled untouched.
	Tunnel = "tunnel"
)

// Record is one exchange as the proxy saw it. Observers must treat it as
// read-only: its slices are shared with the proxy's policy.
type Record struct {
	// Start is when the proxy read the request; Duration is how long the
	// exchange took until its answer was written or it gave up.
	Start    time.Time
	Duration time.Duration

	// Method, Host and Path are the request's; Path has no query (a query
	// may carry a credential), and a long Host or Path is cut
	// (log.max_path_bytes). A CONNECT has Method "CONNECT" and Host the
	// authority it asked for.
	Method string
	Host   string
	Path   string

	// Upstream is the name of the configured upstream that claims the
	// host; empty when none does. Names come from the configuration, so
	// they are few.
	Upstream string
	// Key is the fingerprint of the request's key (the first 12 hex digits
	// of the credential's SHA-256) or "anonymous"; empty when the host has
	// no upstream policy. Identity names the rule that found it
	// ("header:x-api-key", "anonymous").
	Key      string
	Identity string
	// StoreKey is the key's name in the quota store. It holds the full
	// SHA-256 of the credential: use it to ask the store, never show it.
	StoreKey string
	// Limits are the key's limits as configured; Enforced are the same
	// limits with each window widened by the upstream's margin, as the
	// store applies them (and as quota.Inspector wants them).
	Limits   []quota.Limit
	Enforced []quota.Limit

	// Decision is what the proxy decided: one of the constants above.
	Decision string
	// QueueWait is how long the request waited for its slot.
	QueueWait time.Duration
	// Status is the status the client got; 0 when none was written.
	Status int
	// Attempts counts the times the request was admitted for sending
	// (more than 1 when the proxy retried after an upstream throttle).
	// Throttles counts the upstream's answers recognised as throttles, and
	// ThrottleRule names the rule that recognised the last one.
	Attempts     int
	Throttles    int
	ThrottleRule string
	// Error says what failed, when something did; it never holds a URL or
	// a credential.
	Error string
	// StoreFailed reports that the quota store failed to decide: the
	// client got a 503.
	StoreFailed bool
}

// Retries is how many times the request was sent again after an upstream
// throttle.
func (r *Record) Retries() int { return max(r.Attempts-1, 0) }

// Throttled reports that the client's answer is the upstream's throttle
// (rewritten or not): the last attempt was throttled.
func (r *Record) Throttled() bool { return r.Throttles > 0 && r.Throttles >= r.Attempts }

// Observer is told of every exchange once, when it has ended, on the
// exchange's goroutine. Implementations must be safe for concurrent use,
// quick (the client may still be waiting for its connection to be reused),
// and must not keep the record's slices.
type Observer interface {
	Observe(Record)
}

// Observers tells each of its observers, in order.
type Observers []Observer

// Observe implements Observer.
func (os Observers) Observe(r Record) {
	for _, o := range os {
		o.Observe(r)
	}
}
