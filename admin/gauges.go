package admin

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
)

// The metrics read at each scrape: the state of the keys seen, from the
// store, and the proxy's live counts.
var (
	queueDepthDesc = prometheus.NewDesc("ratelimit_proxy_queue_depth",
		"Requests waiting for a slot, summed over the keys of the upstream this proxy has seen (with a shared store, every replica's).",
		[]string{"upstream"}, nil)
	bookedDesc = prometheus.NewDesc("ratelimit_proxy_booked_retries",
		"Slots kept for the retries of refused requests (their Retry-After), summed over the keys of the upstream this proxy has seen.",
		[]string{"upstream"}, nil)
	learnedRemainingDesc = prometheus.NewDesc("ratelimit_proxy_learned_remaining",
		"The least quota the upstream reports left for any key of it this proxy has seen (less what was sent since and the learn threshold); absent while no report is in force.",
		[]string{"upstream"}, nil)
	keysDesc = prometheus.NewDesc("ratelimit_proxy_keys",
		"Keys of the upstream this proxy remembers (the quota API lists them).",
		[]string{"upstream"}, nil)
	connsDesc = prometheus.NewDesc("ratelimit_proxy_open_connections",
		"Client connections open now: direct (plain HTTP, CONNECT not yet answered) and intercepted (TLS the proxy terminates).",
		[]string{"kind"}, nil)
	tunnelsDesc = prometheus.NewDesc("ratelimit_proxy_open_tunnels",
		"CONNECT tunnels to hosts without a policy, open now.", nil, nil)
	reloadsDesc = prometheus.NewDesc("ratelimit_proxy_reloads_total",
		"Configuration reloads applied.", nil, nil)
	storeDownDesc = prometheus.NewDesc("ratelimit_proxy_store_down",
		"1 while the shared quota store (Redis) fails and this replica decides by store.on_store_error, else 0; absent with the memory store.", nil, nil)
)

// fallbackStore is a shared store behind a fallback (quota/fallback):
// its failures never reach the proxy as errors, so the metrics ask it.
type fallbackStore interface {
	Down() bool
	Failures() uint64
}

// gauges is the collector of the metrics read at each scrape.
type gauges struct{ a *endpoints }

func (g gauges) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{queueDepthDesc, bookedDesc, learnedRemainingDesc, keysDesc, connsDesc, tunnelsDesc, reloadsDesc, storeDownDesc} {
		ch <- d
	}
	g.a.rec.storeErrors.Describe(ch)
}

func (g gauges) Collect(ch chan<- prometheus.Metric) {
	a := g.a
	var direct, intercepted, tunnels int
	if a.opts.Conns != nil {
		direct, intercepted, tunnels = a.opts.Conns()
	}
	ch <- prometheus.MustNewConstMetric(connsDesc, prometheus.GaugeValue, float64(direct), "direct")
	ch <- prometheus.MustNewConstMetric(connsDesc, prometheus.GaugeValue, float64(intercepted), "intercepted")
	ch <- prometheus.MustNewConstMetric(tunnelsDesc, prometheus.GaugeValue, float64(tunnels))
	var reloads uint64
	if a.opts.Reloads != nil {
		reloads = a.opts.Reloads()
	}
	ch <- prometheus.MustNewConstMetric(reloadsDesc, prometheus.CounterValue, float64(reloads))

	type perUpstream struct {
		keys, queued, booked int
		remaining            int // -1: no report in force
	}
	ups := map[string]*perUpstream{}
	seen := a.rec.seen()
	ctx, cancel := context.WithTimeout(context.Background(), a.opts.Timeout)
	defer cancel()
	for _, k := range seen {
		u := ups[k.upstream]
		if u == nil {
			u = &perUpstream{remaining: -1}
			ups[k.upstream] = u
		}
		u.keys++
		if a.inspector == nil {
			continue
		}
		st, err := a.inspector.Inspect(ctx, k.storeKey, k.enforced)
		if err != nil {
			a.rec.storeErrors.WithLabelValues("inspect").Inc()
			continue
		}
		u.queued += st.Queued
		u.booked += st.Booked
		if !st.BudgetUntil.IsZero() {
			u.remaining = least(u.remaining, max(st.Budget, 0))
		}
	}
	if fb, ok := a.opts.Store.(fallbackStore); ok {
		down := 0.0
		if fb.Down() {
			down = 1
		}
		ch <- prometheus.MustNewConstMetric(storeDownDesc, prometheus.GaugeValue, down)
		a.countSharedFailures(fb.Failures())
	}
	a.rec.storeErrors.Collect(ch) // after the reads above: their failures count now
	for name, u := range ups {
		ch <- prometheus.MustNewConstMetric(keysDesc, prometheus.GaugeValue, float64(u.keys), name)
		if a.inspector == nil {
			continue
		}
		ch <- prometheus.MustNewConstMetric(queueDepthDesc, prometheus.GaugeValue, float64(u.queued), name)
		ch <- prometheus.MustNewConstMetric(bookedDesc, prometheus.GaugeValue, float64(u.booked), name)
		if u.remaining >= 0 {
			ch <- prometheus.MustNewConstMetric(learnedRemainingDesc, prometheus.GaugeValue, float64(u.remaining), name)
		}
	}
}

// countSharedFailures adds to store_errors_total{op="shared"} the failures
// of the shared store since the last scrape: total is the fallback's count.
func (a *endpoints) countSharedFailures(total uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if total > a.sharedFailures {
		a.rec.storeErrors.WithLabelValues("shared").Add(float64(total - a.sharedFailures))
		a.sharedFailures = total
	}
}
