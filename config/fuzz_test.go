package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// FuzzParse: Parse never panics, every error names the file, and what it
// accepts is complete and within every bound.
func FuzzParse(f *testing.F) {
	if data, err := os.ReadFile(filepath.Join("..", "config.example.yaml")); err == nil {
		f.Add(data)
	}
	for _, name := range Profiles() {
		f.Add([]byte("upstreams:\n  - profile: " + name + "\n    hosts: [a.test]\n"))
	}
	for _, s := range []string{
		"listen: 127.0.0.1:1\nlisten_addr: x\n",
		"upstreams:\n  - name: a\n    hosts: [a, \"[::1]\", b:8443]\n    limits: [15/1s, 300/1m, 10000/24h]\n    window_margin: 250ms\n    connect_to: a.internal:443\n",
		"upstreams:\n  - name: a\n    hosts: [a]\n    max_queue: 0\n    max_wait: 1000000h\n",
		"upstreams:\n  - name: a\n    hosts: [a]\n    identity: [{header: k, limits: [1/1s]}, {query: q}, {authorization: Bearer}, {source_ip: true}]\n    overrides: [{prefix: p_, limits: [2/1m]}, {fingerprint: 0123456789ab, limits: [1/1h]}]\n    anonymous: {limits: []}\n",
		"timeouts: {dial: 1ms, tunnel_idle: 24h}\nrequests: {max_header_bytes: 1024, max_header_fields: 1}\nlog: {max_path_bytes: 64}\n",
		"upstreams:\n  - name: a\n    hosts: [a]\n    throttle: {min_wait: 2s, max_wait: 1s, rules: {statuses: [429], body_fields: [{path: a.b, values: [X]}]}}\n",
		"listen: &x 127.0.0.1:1\nadmin: *x\n",
		"upstreams: [\n",
		"",
		"- a\n- b\n",
		"? [a]\n: b\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("fuzz.yaml", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.yaml:") {
				t.Fatalf("the error does not start with the file name: %v", err)
			}
			return
		}
		checkComplete(t, cfg)
	})
}

// checkComplete asserts what every accepted configuration guarantees.
func checkComplete(t *testing.T, cfg *Config) {
	t.Helper()
	if cfg.Listen == "" || cfg.DataDir == "" || cfg.CACert == "" || cfg.CAKey == "" {
		t.Errorf("addresses and paths not filled: %+v", cfg)
	}
	if n := cfg.MaxIdleConnsPerHost; n < 1 || n > 65536 {
		t.Errorf("max_idle_conns_per_host %d", n)
	}
	if r := cfg.Requests; r.MaxHeaderBytes < 1024 || r.MaxHeaderBytes > 1<<20 || r.MaxHeaderFields < 1 || r.MaxHeaderFields > 10000 {
		t.Errorf("requests %+v", r)
	}
	if n := cfg.Log.MaxPathBytes; n < 64 || n > 65536 {
		t.Errorf("log.max_path_bytes %d", n)
	}
	to := cfg.Timeouts
	for _, d := range []Duration{to.Dial, to.TLSHandshake, to.ResponseHeader, to.IdleConn, to.ClientIdle, to.ClientHeader, to.TunnelIdle, to.Shutdown} {
		if d < Duration(time.Millisecond) || d > Duration(24*time.Hour) {
			t.Errorf("a timeout of %v", time.Duration(d))
		}
	}
	hosts := map[string]bool{}
	for _, u := range cfg.Upstreams {
		if u.Name == "" || len(u.Hosts) == 0 || u.Anonymous == nil || u.Throttle.Rules == nil || u.Learn.Threshold == nil {
			t.Fatalf("upstream not complete: %+v", u)
		}
		for _, h := range u.Hosts {
			if hosts[h] {
				t.Errorf("host %q claimed twice", h)
			}
			hosts[h] = true
		}
		if u.MaxQueue < 1 || u.MaxQueue > 100000 || u.MaxWait <= 0 || u.MaxWait > Duration(time.Hour) {
			t.Errorf("%s: max_queue %d max_wait %v", u.Name, u.MaxQueue, time.Duration(u.MaxWait))
		}
		if u.Mode != "queue" && u.Mode != "reject" {
			t.Errorf("%s: mode %q", u.Name, u.Mode)
		}
		if u.ConnectTo != "" && checkHostPort(u.ConnectTo) != nil {
			t.Errorf("%s: connect_to %q", u.Name, u.ConnectTo)
		}
		th := u.Throttle
		if th.MinWait > th.DefaultWait || th.DefaultWait > th.MaxWait {
			t.Errorf("%s: waits %v <= %v <= %v", u.Name, th.MinWait, th.DefaultWait, th.MaxWait)
		}
		if th.Retry.MaxAttempts < 1 || th.Retry.MaxAttempts > 10 {
			t.Errorf("%s: max_attempts %d", u.Name, th.Retry.MaxAttempts)
		}
		// No window is widened by more than a quarter of itself.
		sets := [][]Limit{u.Limits, u.Anonymous.Limits}
		for _, r := range u.Identity {
			sets = append(sets, r.Limits)
		}
		for _, o := range u.Overrides {
			sets = append(sets, o.Limits)
		}
		for _, ls := range sets {
			for _, l := range ls {
				if m := u.Margin(l.Window); m > l.Window/4 || m <= 0 {
					t.Errorf("%s: margin %v for a window of %v", u.Name, m, l.Window)
				}
			}
		}
	}
}
