package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
)

// Options are what the admin endpoints read.
type Options struct {
	// Recorder observes the proxy's decision records. Required.
	Recorder *Recorder
	// Store is the proxy's quota store. Required. /v1/quotas, the status
	// page and the queue and learned-remaining metrics need it to
	// implement quota.Inspector; /readyz asks it about a key to know it
	// answers.
	Store quota.Store
	// CACert is the interception CA in PEM, served at /ca.pem; nil serves
	// nothing there.
	CACert []byte
	// Ready reports why the proxy cannot serve yet (no configuration
	// loaded); nil means it can.
	Ready func() error
	// Conns counts the proxy's open client connections (direct,
	// intercepted) and untouched tunnels; nil reports none.
	Conns func() (direct, intercepted, tunnels int)
	// Reloads counts the configuration reloads applied; nil reports 0.
	Reloads func() uint64
	// Timeout bounds each reading of the store (default 5s).
	Timeout time.Duration
}

// inspectKey is the key /readyz asks the store about.
const inspectKey = "ratelimit-proxy/readyz"

// Handler serves the admin endpoints:
//
//	GET /            the status page
//	GET /healthz     200 "ok" while the process serves
//	GET /readyz      200 when the configuration is loaded and the store answers, else 503
//	GET /metrics     Prometheus metrics
//	GET /v1/quotas   the quota state of every key seen, as JSON (?limit=&cursor=&upstream=)
//	GET /ca.pem      the interception CA
func Handler(opts Options) (http.Handler, error) {
	if opts.Recorder == nil || opts.Store == nil {
		return nil, errors.New("admin: a Recorder and a Store are required")
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	a := &endpoints{opts: opts, rec: opts.Recorder}
	a.inspector, _ = opts.Store.(quota.Inspector)

	reg := prometheus.NewRegistry()
	for _, c := range opts.Recorder.collectors() {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("admin: %w", err)
		}
	}
	for _, c := range []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		gauges{a},
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("admin: %w", err)
		}
	}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", a.statusPage)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", a.readyz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("GET /v1/quotas", a.quotas)
	mux.HandleFunc("GET /ca.pem", func(w http.ResponseWriter, r *http.Request) {
		if opts.CACert == nil {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/x-pem-file")
		w.Write(opts.CACert)
	})
	return mux, nil
}

// endpoints is the state behind Handler.
type endpoints struct {
	opts      Options
	rec       *Recorder
	inspector quota.Inspector // nil when the store cannot describe keys

	mu             sync.Mutex
	sharedFailures uint64 // the shared store's failures counted in the metrics
}

func (a *endpoints) readyz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	var problems []string
	if a.opts.Ready != nil {
		if err := a.opts.Ready(); err != nil {
			problems = append(problems, "config: "+err.Error())
		}
	}
	if err := a.ping(r.Context()); err != nil {
		problems = append(problems, "store: "+err.Error())
	}
	if len(problems) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		for _, p := range problems {
			fmt.Fprintln(w, p)
		}
		return
	}
	fmt.Fprintln(w, "ok")
}

// pinger is a store that can say whether it answers.
type pinger interface {
	Ping(ctx context.Context) error
}

// ping asks the store whether it answers: with Ping when it has one, else
// by describing a key nobody uses.
func (a *endpoints) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, a.opts.Timeout)
	defer cancel()
	switch s := a.opts.Store.(type) {
	case pinger:
		return s.Ping(ctx)
	case quota.Inspector:
		_, err := s.Inspect(ctx, inspectKey, nil)
		return err
	}
	return nil // nothing to ask: a store without a way to ask is in process
}
