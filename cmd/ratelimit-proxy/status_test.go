package main

import (
	"bytes"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/admin"
	"github.com/ratelimit-proxy/ratelimit-proxy/config"
	"github.com/ratelimit-proxy/ratelimit-proxy/decision"
	"github.com/ratelimit-proxy/ratelimit-proxy/proxy"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
)

// adminWithOneKey serves the admin endpoints of a recorder that saw one
// request of one key.
func adminWithOneKey(t *testing.T) *httptest.Server {
	t.Helper()
	rec := admin.NewRecorder(0)
	limits := []quota.Limit{{Count: 4, Window: time.Minute}}
	store := quota.NewMemoryStore(nil)
	res, _ := store.Reserve(t.Context(), quota.Request{Key: "api/cred/k", Limits: limits})
	store.Settle(t.Context(), res, res.At)
	rec.Observe(decision.Record{Method: "GET", Upstream: "api", Key: "3f2a9c0d1e4b", Identity: "header:apikey",
		StoreKey: "api/cred/k", Limits: limits, Enforced: limits, Decision: decision.Pass, Status: 200, Attempts: 1})
	h, err := admin.Handler(admin.Options{Recorder: rec, Store: store})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

func TestStatusPrintsEachKeyOfTheRunningProxy(t *testing.T) {
	srv := adminWithOneKey(t)
	addr := strings.TrimPrefix(srv.URL, "http://")
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	os.WriteFile(cfg, []byte("admin: "+addr+"\n"), 0o644)
	want := "api\n  3f2a9c0d1e4b  header:apikey  queue 0  cooldown none\n    4/1m       [#####---------------]           1/4 used      3 left  next free now\n"
	for _, args := range [][]string{{"status", "-admin", addr}, {"status", "-config", cfg}} {
		var out, errOut bytes.Buffer
		if err := run(args, strings.NewReader(""), &out, &errOut); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, errOut.String())
		}
		if out.String() != want {
			t.Errorf("%v printed:\n%s\nwant:\n%s", args, out.String(), want)
		}
	}
}

func TestStatusErrorsAreOneClearLine(t *testing.T) {
	dir := t.TempDir()
	noAdmin := filepath.Join(dir, "no-admin.yaml")
	os.WriteFile(noAdmin, []byte("listen: 127.0.0.1:8080\n"), 0o644)
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"status", "-config", noAdmin}, "no-admin.yaml sets no admin address: set admin, or pass -admin ADDR"},
		{[]string{"status", "-admin", "nowhere"}, `-admin: "nowhere": want host:port`},
		{[]string{"status", "-admin", "127.0.0.1:" + freePort(t)}, "connection refused"},
		{[]string{"status", "extra"}, `unexpected argument "extra"`},
	}
	for _, tt := range tests {
		err := run(tt.args, strings.NewReader(""), &bytes.Buffer{}, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%v: %v, want one line containing %q", tt.args, err, tt.want)
		}
	}
}

func TestStatusHelpExitsZero(t *testing.T) {
	var out, errOut bytes.Buffer
	if err := run([]string{"status", "-h"}, strings.NewReader(""), &out, &errOut); err != nil {
		t.Fatalf("status -h: %v", err)
	}
	if !strings.Contains(out.String(), "Usage: ratelimit-proxy status") || !strings.Contains(out.String(), "-admin") || errOut.Len() > 0 {
		t.Errorf("status -h printed %q on stdout, %q on stderr", out.String(), errOut.String())
	}
}

// freePort returns a loopback port nothing listens on.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	ln.Close()
	return port
}

// TestStatusSendsTheClientToken: with client_tokens set, the admin
// endpoints need a token; status sends RATELIMIT_PROXY_TOKEN's.
func TestStatusSendsTheClientToken(t *testing.T) {
	cfg, err := config.Parse("t.yaml", []byte("data_dir: "+t.TempDir()+"\nclient_tokens: [9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08]\n")) // SHA-256 of "test"
	if err != nil {
		t.Fatal(err)
	}
	srv, err := proxy.New(cfg, proxy.Options{Store: quota.NewMemoryStore(nil)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(t.Context())
	guarded := httptest.NewServer(srv.GuardAdmin(adminWithOneKey(t).Config.Handler))
	defer guarded.Close()
	addr := strings.TrimPrefix(guarded.URL, "http://")
	var out, errOut bytes.Buffer
	if err := run([]string{"status", "-admin", addr}, strings.NewReader(""), &out, &errOut); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("status without a token: %v, want the 401", err)
	}
	t.Setenv(tokenEnv, "test")
	if err := run([]string{"status", "-admin", addr}, strings.NewReader(""), &out, &errOut); err != nil || !strings.Contains(out.String(), "3f2a9c0d1e4b") {
		t.Errorf("status with %s: %v\n%s", tokenEnv, err, out.String())
	}
}
