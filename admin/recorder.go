// Package admin serves the admin endpoints of ratelimit-proxy: health and
// readiness, Prometheus metrics, the quota API (/v1/quotas) and the live
// status page. It learns what the proxy does only from its decision
// records (a Recorder observes them) and from the quota store; it never
// reaches into the proxy.
//
// Nothing it serves holds a credential: keys are named by fingerprint, and
// fingerprints never become metric labels (label values are upstream
// names, decisions and rule names, all bounded by the configuration).
package admin

import (
	"crypto/sha256"
	"encoding/hex"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/ratelimit-proxy/ratelimit-proxy/decision"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
)

// DefaultMaxKeys is how many keys a Recorder remembers when not told.
const DefaultMaxKeys = 4096

// Request outcomes, the values of the decision label of
// ratelimit_proxy_requests_total. Each request has exactly one.
const (
	OutcomeForwarded         = "forwarded"          // sent at once, answered (not a throttle)
	OutcomeQueued            = "queued"             // sent after a wait, answered (not a throttle)
	OutcomeRejectedLocally   = "rejected_locally"   // the proxy's own 429: over quota or held
	OutcomeQueueFull         = "queue_full"         // the proxy's own 429: max_queue reached
	OutcomeThrottledUpstream = "throttled_upstream" // the client got the upstream's throttle
	OutcomeUpstreamError     = "upstream_error"     // no answer from the upstream: 502 or 504
	OutcomeStoreError        = "store_error"        // the quota store failed: 503
	OutcomeClientGone        = "client_gone"        // the client left first
	OutcomeShutdown          = "shutdown"           // still waiting at the shutdown deadline: 503
	OutcomeDenied            = "denied"             // a host without a policy, refused
	OutcomeBadRequest        = "bad_request"        // not a proxy request
	OutcomeCapacity          = "capacity"           // a bound of resources reached: 503
)

// Outcome classifies a record for the metrics.
func Outcome(r *decision.Record) string {
	switch r.Decision {
	case decision.Rejected:
		return OutcomeRejectedLocally
	case decision.QueueFull:
		return OutcomeQueueFull
	case decision.ClientGone:
		return OutcomeClientGone
	case decision.Shutdown:
		return OutcomeShutdown
	case decision.Denied:
		return OutcomeDenied
	case decision.Capacity:
		return OutcomeCapacity
	case decision.Error:
		switch {
		case r.StoreFailed:
			return OutcomeStoreError
		case r.Status == 400:
			return OutcomeBadRequest
		}
		return OutcomeUpstreamError
	}
	if r.Throttled() {
		return OutcomeThrottledUpstream
	}
	if r.Decision == decision.Queued {
		return OutcomeQueued
	}
	return OutcomeForwarded // pass, and unlimited (no upstream)
}

// Recorder observes the proxy's decision records: it counts them for the
// metrics and remembers the keys it has seen (the most recent MaxKeys), so
// that the quota API can ask the store about them. It is safe for
// concurrent use.
type Recorder struct {
	keys *lru.Cache[string, seenKey] // by store key

	requests    *prometheus.CounterVec
	connects    *prometheus.CounterVec
	retries     *prometheus.CounterVec
	throttles   *prometheus.CounterVec
	queueWait   *prometheus.HistogramVec
	storeErrors *prometheus.CounterVec
}

// seenKey is what the Recorder remembers of a key.
type seenKey struct {
	storeKey string
	sortKey  string // upstream, fingerprint, a digest of the store key
	upstream string
	key      string // fingerprint
	identity string
	limits   []quota.Limit
	enforced []quota.Limit
	lastSeen time.Time
}

// queueWaitBuckets go up to the longest max_wait a sane config sets.
var queueWaitBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120}

// NewRecorder returns a Recorder that remembers up to maxKeys keys (0 means
// DefaultMaxKeys).
func NewRecorder(maxKeys int) *Recorder {
	if maxKeys <= 0 {
		maxKeys = DefaultMaxKeys
	}
	keys, _ := lru.New[string, seenKey](maxKeys) // errors only for size <= 0
	return &Recorder{
		keys: keys,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ratelimit_proxy_requests_total",
			Help: "Requests by upstream (empty: a host without a policy) and decision: forwarded, queued, rejected_locally, queue_full, throttled_upstream, upstream_error, store_error, client_gone, shutdown, denied, bad_request, capacity. Each request counts once.",
		}, []string{"upstream", "decision"}),
		connects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ratelimit_proxy_connects_total",
			Help: "CONNECT requests by upstream (empty: a host without a policy) and decision: intercept, tunnel, denied, error.",
		}, []string{"upstream", "decision"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ratelimit_proxy_retries_total",
			Help: "Requests sent again by the proxy after an upstream throttle.",
		}, []string{"upstream"}),
		throttles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ratelimit_proxy_upstream_throttles_total",
			Help: "Upstream answers recognised as throttles, by upstream and the rule that recognised them.",
		}, []string{"upstream", "rule"}),
		queueWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ratelimit_proxy_queue_wait_seconds",
			Help:    "How long admitted requests waited for their slot (0 for those sent at once).",
			Buckets: queueWaitBuckets,
		}, []string{"upstream"}),
		storeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ratelimit_proxy_store_errors_total",
			Help: "Failures of the quota store: op=admit when a request could not be decided, op=inspect when the admin endpoints could not read a key, op=shared when the shared store (Redis) failed a call decided by store.on_store_error instead.",
		}, []string{"op"}),
	}
}

// Observe implements decision.Observer.
func (rc *Recorder) Observe(r decision.Record) {
	if r.Method == "CONNECT" {
		rc.connects.WithLabelValues(r.Upstream, r.Decision).Inc()
		return
	}
	rc.requests.WithLabelValues(r.Upstream, Outcome(&r)).Inc()
	if r.Upstream == "" {
		return
	}
	if n := r.Retries(); n > 0 {
		rc.retries.WithLabelValues(r.Upstream).Add(float64(n))
	}
	if r.Throttles > 0 {
		rc.throttles.WithLabelValues(r.Upstream, r.ThrottleRule).Add(float64(r.Throttles))
	}
	if r.Decision == decision.Pass || r.Decision == decision.Queued || r.QueueWait > 0 {
		rc.queueWait.WithLabelValues(r.Upstream).Observe(r.QueueWait.Seconds())
	}
	if r.StoreFailed {
		rc.storeErrors.WithLabelValues("admit").Inc()
	}
	if r.StoreKey != "" {
		rc.remember(&r)
	}
}

func (rc *Recorder) remember(r *decision.Record) {
	k, ok := rc.keys.Peek(r.StoreKey)
	if !ok {
		sum := sha256.Sum256([]byte(r.StoreKey))
		k = seenKey{storeKey: r.StoreKey, sortKey: r.Upstream + "\x00" + r.Key + "\x00" + hex.EncodeToString(sum[:8])}
	}
	k.upstream, k.key, k.identity = r.Upstream, r.Key, r.Identity
	k.limits, k.enforced = r.Limits, r.Enforced
	k.lastSeen = r.Start.Add(r.Duration)
	rc.keys.Add(r.StoreKey, k)
}

// seen returns the keys remembered now, in no particular order.
func (rc *Recorder) seen() []seenKey { return rc.keys.Values() }

// collectors are the Recorder's metrics, but for storeErrors: the gauges
// collect it after reading the store, so that a scrape counts its own
// failures.
func (rc *Recorder) collectors() []prometheus.Collector {
	return []prometheus.Collector{rc.requests, rc.connects, rc.retries, rc.throttles, rc.queueWait}
}
