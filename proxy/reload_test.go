package proxy_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/config"
	"github.com/ratelimit-proxy/ratelimit-proxy/proxy"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
)

// TestReloadJudgesAKeyByItsNewLimitsAgainstItsHistory: a reload keeps
// every key's sends; a key whose limits changed is judged by the new
// limits against them, not from zero.
func TestReloadJudgesAKeyByItsNewLimitsAgainstItsHistory(t *testing.T) {
	rec := newRecorder(t, false)
	p := startProxy(t, upstreamYAML(rec, "limits: [2/1h]\nmode: reject\n"))
	c := p.client()
	for i := range 2 {
		if code, _, _ := get(t, c, "http://api.test/", "k"); code != 200 {
			t.Fatalf("before the reload, request %d: %d, want 200", i, code)
		}
	}
	if err := p.reload(upstreamYAML(rec, "limits: [3/1h]\nmode: reject\n")); err != nil {
		t.Fatal(err)
	}
	// Two sent, three allowed: one more, then 429. A reset history would
	// let three more through.
	for i, want := range []int{200, 429} {
		if code, _, _ := get(t, c, "http://api.test/", "k"); code != want {
			t.Fatalf("after raising the limit to 3/1h, request %d: %d, want %d", i, code, want)
		}
	}
	if err := p.reload(upstreamYAML(rec, "limits: [1/1h]\nmode: reject\n")); err != nil {
		t.Fatal(err)
	}
	code, _, h := get(t, c, "http://api.test/", "k")
	if code != 429 || !strings.Contains(h.Get("RateLimit-Policy"), `"1/1h"`) {
		t.Fatalf("after lowering the limit to 1/1h: %d, policy %q; want 429 under the new policy", code, h.Get("RateLimit-Policy"))
	}
	if n := len(rec.arrivals("k")); n != 3 {
		t.Errorf("upstream saw %d requests, want 3", n)
	}
	if got := p.srv.Reloads(); got != (proxy.ReloadCounts{Applied: 2}) {
		t.Errorf("Reloads() = %+v, want 2 applied", got)
	}
}

// TestReloadUnderLoadKeepsQueuedRequests: requests queued when the policy
// changes keep their slots and succeed; requests after it get the new
// policy (a new upstream, new limits).
func TestReloadUnderLoadKeepsQueuedRequests(t *testing.T) {
	rec := newRecorder(t, false)
	other := newRecorder(t, false)
	p := startProxy(t, upstreamYAML(rec, "limits: [1/500ms]\nwindow_margin: 10ms\n"))
	c := p.client()
	if code, _, _ := get(t, c, "http://api.test/first", "k"); code != 200 {
		t.Fatalf("first request: %d", code)
	}
	const queued = 3 // slots at about 0.5s, 1s and 1.5s
	codes := make(chan int, queued)
	var wg sync.WaitGroup
	for range queued {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, err := fetch(c, "http://api.test/queued", "k")
			if err != nil {
				t.Error(err)
			}
			codes <- a.code
		}()
	}
	waitFor(t, "the requests to queue", func() bool { return p.queued(t, "api", "k") >= 2 })

	next := upstreamYAML(rec, "limits: [1/500ms]\nwindow_margin: 10ms\n") + fmt.Sprintf(`  - name: other
    hosts: [other.test]
    connect_to: %s
    identity: [{header: apikey}]
    limits: [1/1h]
    mode: reject
`, other.addr())
	if err := p.reload(next); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(codes)
	for code := range codes {
		if code != 200 {
			t.Errorf("a request queued across the reload got %d, want 200", code)
		}
	}
	// They kept their slots, 500ms apart (checked over 300ms: the
	// recorder's clock may lag on a loaded machine).
	if got := maxInWindow(rec.arrivals("k"), 300*time.Millisecond); got > 1 {
		t.Errorf("upstream saw %d requests of k within 300ms, limit 1/500ms", got)
	}
	for i, want := range []int{200, 429} {
		if code, _, _ := get(t, c, "http://other.test/", "k"); code != want {
			t.Errorf("the upstream added by the reload, request %d: %d, want %d", i, code, want)
		}
	}
	if n := len(other.arrivals("k")); n != 1 {
		t.Errorf("the new upstream saw %d requests, want 1", n)
	}
	if got := p.srv.Reloads(); got.Applied != 1 || got.Refused != 0 {
		t.Errorf("Reloads() = %+v, want 1 applied", got)
	}
	if !strings.Contains(p.logs.String(), `"msg":"config reloaded"`) {
		t.Error(`no "config reloaded" log line`)
	}
}

// TestReloadRefusesAndKeepsTheRunningPolicy: a configuration that fails
// to load, does not compile, or changes what only a restart applies is
// refused with one log line each, and the running policy keeps serving.
func TestReloadRefusesAndKeepsTheRunningPolicy(t *testing.T) {
	rec := newRecorder(t, false)
	base := upstreamYAML(rec, "limits: [1/1h]\nmode: reject\n")
	p := startProxy(t, base)
	c := p.client()
	otherCA := t.TempDir()
	for _, tc := range []struct {
		name string
		load func() (*config.Config, error)
		want string
	}{
		{"a file that does not parse", func() (*config.Config, error) {
			return config.Parse("next.yaml", []byte("upstreams: [{name: x, hosts: [x.test], limits: [1/lol]}]"))
		}, `next.yaml:1: upstreams[0].limits[0]`},
		{"a new CA", func() (*config.Config, error) {
			return config.Parse("test.yaml", []byte(p.prefix+"ca_cert: "+otherCA+"/c.pem\nca_key: "+otherCA+"/k.pem\n"+base))
		}, "ca_cert/ca_key changed: restart the proxy"},
		{"new timeouts", func() (*config.Config, error) {
			return config.Parse("test.yaml", []byte(p.prefix+"timeouts: {dial: 1s}\n"+base))
		}, "timeouts changed: restart the proxy"},
		{"another store", func() (*config.Config, error) {
			return config.Parse("test.yaml", []byte(p.prefix+"store: {on_store_error: reject}\n"+base))
		}, "store changed: restart the proxy"},
		{"a config that did not go through Parse", func() (*config.Config, error) {
			cfg, err := config.Parse("test.yaml", []byte(p.prefix+base))
			if err == nil {
				cfg.Upstreams[0].Mode = "sometimes"
			}
			return cfg, err
		}, `upstreams[0].mode: "sometimes": want queue or reject`},
		{"nothing", func() (*config.Config, error) { return nil, errors.New("reading config: gone") }, "reading config: gone"},
	} {
		err := p.srv.Reload(tc.load)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("reload of %s: %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
	if got := p.srv.Reloads(); got != (proxy.ReloadCounts{Refused: 6}) {
		t.Errorf("Reloads() = %+v, want 6 refused", got)
	}
	if n := strings.Count(p.logs.String(), `"msg":"reload refused"`); n != 6 {
		t.Errorf("%d reload refused log lines, want 6", n)
	}
	for i, want := range []int{200, 429} {
		if code, _, _ := get(t, c, "http://api.test/", "k"); code != want {
			t.Errorf("request %d after the refused reloads: %d, want %d", i, code, want)
		}
	}
}

// TestNewAndCompileRefuseAnIncompleteConfig: a configuration that did not
// go through config.Parse is refused with an error naming the field, never
// a panic.
func TestNewAndCompileRefuseAnIncompleteConfig(t *testing.T) {
	valid := func() *config.Config {
		cfg, err := config.Parse("t.yaml", []byte("data_dir: "+t.TempDir()+"\nupstreams: [{name: a, hosts: [a.test], limits: [1/1s]}]\n"))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	for _, tc := range []struct {
		name   string
		change func(*config.Config)
		want   string
	}{
		{"zero config", func(c *config.Config) { *c = config.Config{} }, "timeouts.dial"},
		{"unknown_hosts unset", func(c *config.Config) { c.UnknownHosts = "" }, "unknown_hosts"},
		{"mode unset", func(c *config.Config) { c.Upstreams[0].Mode = "" }, "upstreams[0].mode"},
		{"anonymous unset", func(c *config.Config) { c.Upstreams[0].Anonymous = nil }, "upstreams[0].anonymous: not set"},
		{"throttle rules unset", func(c *config.Config) { c.Upstreams[0].Throttle.Rules = nil }, "upstreams[0].throttle.rules: not set"},
		{"rewrite unset", func(c *config.Config) { c.Upstreams[0].Throttle.Rewrite = nil }, "upstreams[0].throttle.rewrite: not set"},
		{"retry unset", func(c *config.Config) { c.Upstreams[0].Throttle.Retry.Enabled = nil }, "throttle.retry.enabled: not set"},
		{"idempotency unset", func(c *config.Config) { c.Upstreams[0].Throttle.Retry.IdempotencyKey = nil }, "throttle.retry.idempotency_key: not set"},
		{"threshold unset", func(c *config.Config) { c.Upstreams[0].Learn.Threshold = nil }, "upstreams[0].learn.threshold: not set"},
		{"learn mode unknown", func(c *config.Config) { c.Upstreams[0].Learn.Mode = "maybe" }, "upstreams[0].learn.mode"},
		{"zero limit", func(c *config.Config) { c.Upstreams[0].Limits[0] = config.Limit{} }, "upstreams[0].limits[0]"},
		{"no hosts", func(c *config.Config) { c.Upstreams[0].Hosts = nil }, "upstreams[0].hosts"},
		{"one host twice", func(c *config.Config) { c.Upstreams = append(c.Upstreams, c.Upstreams[0]); c.Upstreams[1].Name = "b" }, `upstreams[1].hosts[0]: host "a.test" is already claimed by a`},
		{"zero waits", func(c *config.Config) { c.Upstreams[0].Throttle.MinWait = 0 }, "upstreams[0].throttle: want 0 < min_wait"},
		{"no attempts", func(c *config.Config) { c.Upstreams[0].Throttle.Retry.MaxAttempts = 0 }, "max_attempts"},
		{"empty identity rule", func(c *config.Config) { c.Upstreams[0].Identity = []config.IdentityRule{{}} }, "upstreams[0].identity[0]: set exactly one"},
		{"override without limits", func(c *config.Config) { c.Upstreams[0].Overrides = []config.Override{{Prefix: "x"}} }, "upstreams[0].overrides[0]: an override needs limits"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := valid()
			tc.change(cfg)
			srv, err := proxy.New(cfg, proxy.Options{Store: quota.NewMemoryStore(nil)})
			if err == nil {
				srv.Shutdown(t.Context())
				t.Fatalf("New accepted it")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want an error containing %q", err, tc.want)
			}
		})
	}
	if _, err := proxy.New(nil, proxy.Options{Store: quota.NewMemoryStore(nil)}); err == nil {
		t.Error("New(nil) succeeded")
	}
	if _, err := proxy.Compile(valid()); err != nil {
		t.Errorf("Compile of a parsed config: %v", err)
	}
}
