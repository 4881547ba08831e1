package proxy

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/config"
	"go.uber.org/zap"
)

// fixedSettings are the settings a Server is built with that a reload
// cannot change: the CA it signs with, the roots and pool of its upstream
// transport, the timeouts and header bounds of its listeners and dialer,
// the length of paths in its log lines.
type fixedSettings struct {
	caCert, caKey string
	roots         []string
	maxIdle       int
	timeouts      config.Timeouts // Shutdown excepted: the caller reads it when it stops
	requests      config.Requests // the listeners' header bounds
	maxLogged     int             // log.max_path_bytes
	resources     config.Resources
	store         string // the store section: the store is built once, at start
}

func fixedOf(cfg *config.Config) fixedSettings {
	t := cfg.Timeouts
	t.Shutdown = 0
	return fixedSettings{
		caCert:    cfg.CACert,
		caKey:     cfg.CAKey,
		roots:     slices.Clone(cfg.UpstreamRoots),
		maxIdle:   cfg.MaxIdleConnsPerHost,
		timeouts:  t,
		requests:  cfg.Requests,
		maxLogged: cfg.Log.MaxPathBytes,
		resources: cfg.Resources,
		store:     fmt.Sprintf("%+v", cfg.Store),
	}
}

// changed names the fields that differ between f and g.
func (f fixedSettings) changed(g fixedSettings) []string {
	var fields []string
	if f.caCert != g.caCert || f.caKey != g.caKey {
		fields = append(fields, "ca_cert/ca_key")
	}
	if !slices.Equal(f.roots, g.roots) {
		fields = append(fields, "upstream_roots")
	}
	if f.maxIdle != g.maxIdle {
		fields = append(fields, "max_idle_conns_per_host")
	}
	if f.timeouts != g.timeouts {
		fields = append(fields, "timeouts")
	}
	if f.requests != g.requests {
		fields = append(fields, "requests")
	}
	if f.maxLogged != g.maxLogged {
		fields = append(fields, "log.max_path_bytes")
	}
	if f.resources != g.resources {
		fields = append(fields, "resources")
	}
	if f.store != g.store {
		fields = append(fields, "store")
	}
	return fields
}

func checkTimeouts(t config.Timeouts) error {
	for _, f := range []struct {
		name string
		d    config.Duration
	}{
		{"dial", t.Dial}, {"tls_handshake", t.TLSHandshake}, {"response_header", t.ResponseHeader},
		{"idle_conn", t.IdleConn}, {"client_idle", t.ClientIdle}, {"client_header", t.ClientHeader},
		{"tunnel_idle", t.TunnelIdle}, {"shutdown", t.Shutdown},
		{"client_body", t.ClientBody}, {"upstream_body_idle", t.UpstreamBodyIdle},
	} {
		if f.d <= 0 {
			return fmt.Errorf("timeouts.%s: %v: want a positive duration", f.name, time.Duration(f.d))
		}
	}
	return nil
}

// checkResources refuses resource bounds that are not positive (a
// configuration that did not go through config.Parse).
func checkResources(r config.Resources) error {
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"max_client_conns", int64(r.MaxClientConns)}, {"max_tunnels", int64(r.MaxTunnels)},
		{"max_queued", int64(r.MaxQueued)}, {"max_buffered_bytes", r.MaxBufferedBytes},
		{"max_keys", int64(r.MaxKeys)}, {"max_leaf_certs", int64(r.MaxLeafCerts)},
	} {
		if f.v <= 0 {
			return fmt.Errorf("resources.%s: %d: want a positive number", f.name, f.v)
		}
	}
	return nil
}

// RestartNeededError refuses a reload that changes settings only a restart
// applies.
type RestartNeededError struct {
	Fields []string // as the configuration names them
}

func (e *RestartNeededError) Error() string {
	return fmt.Sprintf("%s changed: restart the proxy to apply it (the running configuration is kept)", joinFields(e.Fields))
}

func joinFields(fields []string) string {
	switch len(fields) {
	case 0:
		return "nothing"
	case 1:
		return fields[0]
	}
	s := ""
	for i, f := range fields {
		switch {
		case i == 0:
		case i == len(fields)-1:
			s += " and "
		default:
			s += ", "
		}
		s += f
	}
	return s
}

// Reload applies the configuration load returns: its upstreams (hosts,
// connect_to, identity, limits, overrides, mode, throttle, learning,
// profiles) and unknown_hosts. It never drops a request: requests in
// flight or queued keep the policy they started with, and every key keeps
// its history in the store, so that a key whose limits changed is judged
// by its new limits against the requests it already sent.
//
// The reload is refused, and the running policy kept, when load fails,
// when the configuration does not compile, or when it changes a setting
// the Server was built with (the CA, upstream_roots, timeouts other than
// shutdown, max_idle_conns_per_host, resources: a *RestartNeededError). Either way
// Reload logs one line, "config reloaded" or "reload refused", and counts
// the outcome (see Reloads). Log settings, listen and admin are the
// caller's: load should refuse changes it cannot apply.
func (s *Server) Reload(load func() (*config.Config, error)) error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	old := s.policy.Load()
	next, err := s.prepareReload(load, old)
	if err != nil {
		s.reloadsRefused.Add(1)
		s.log.Error("reload refused", zap.Error(err))
		return err
	}
	s.policy.Store(next)
	anyUpstream := func(*upstream, *upstream) bool { return true }
	if !maps.Equal(old.connectTo, next.connectTo) || !maps.EqualFunc(old.routes.hosts, next.routes.hosts, anyUpstream) {
		// Idle connections were dialled to the old addresses, or, for a
		// host no upstream claims any more, without the egress guard.
		s.transport.CloseIdleConnections()
	}
	s.reloadsApplied.Add(1)
	s.log.Info("config reloaded", zap.Int("upstreams", len(next.upstreams)))
	return nil
}

func (s *Server) prepareReload(load func() (*config.Config, error), old *Policy) (*Policy, error) {
	if load == nil {
		return nil, errors.New("no configuration to reload")
	}
	cfg, err := load()
	if err != nil {
		return nil, err
	}
	if cfg == nil {
		return nil, errors.New("no configuration to reload")
	}
	if fields := s.fixed.changed(fixedOf(cfg)); len(fields) > 0 {
		return nil, &RestartNeededError{Fields: fields}
	}
	p, err := compilePolicy(cfg, old)
	if err != nil {
		return nil, err
	}
	return p.keyedBy(s.keySecret), nil
}

// ReloadCounts counts the reloads a Server applied and refused.
type ReloadCounts struct {
	Applied, Refused uint64
}

// Reloads returns how many reloads were applied and refused since New.
func (s *Server) Reloads() ReloadCounts {
	return ReloadCounts{Applied: s.reloadsApplied.Load(), Refused: s.reloadsRefused.Load()}
}
