package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/quota/redisstore/redistest"
)

// startCommand runs the command with cfgPath in its own process and
// returns the proxy's address; the process is killed when the test ends.
func startCommand(t *testing.T, cfgPath string) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-config", cfgPath, "-listen", "127.0.0.1:0", "-admin", "off")
	cmd.Env = append(os.Environ(), "RATELIMIT_PROXY_AS_MAIN=1")
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	sc := bufio.NewScanner(stderr)
	timer := time.AfterFunc(20*time.Second, func() { cmd.Process.Kill() })
	defer timer.Stop()
	var seen strings.Builder
	for sc.Scan() {
		seen.WriteString(sc.Text() + "\n")
		var line struct{ Msg, Addr, Store string }
		json.Unmarshal(sc.Bytes(), &line)
		if line.Msg == "proxy listening" {
			if line.Store != "redis" {
				t.Fatalf("the command runs the %q store, want redis", line.Store)
			}
			go io.Copy(io.Discard, stderr)
			return line.Addr
		}
	}
	t.Fatalf("the command did not report its address:\n%s", seen.String())
	return ""
}

// TestThreeProcessesShareOneQuotaThroughRedis runs three proxy processes
// on one Redis: a key's quota is one across them, and a throttle one of
// them sees holds the key on the others. Redis never holds a credential.
func TestThreeProcessesShareOneQuotaThroughRedis(t *testing.T) {
	srv := redistest.Start(t)
	var mu sync.Mutex
	arrivals := map[string]int{}
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := r.Header.Get("apikey")
		mu.Lock()
		arrivals[key]++
		mu.Unlock()
		if r.URL.Path == "/throttle" {
			w.Header().Set("Retry-After", "30")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		io.WriteString(w, "ok")
	}))
	defer upstream.Close()

	dir := t.TempDir()
	secretFile := filepath.Join(dir, "key-secret")
	os.WriteFile(secretFile, []byte("a-deployment-secret-of-32-bytes!\n"), 0o600)
	cfg := fmt.Sprintf(`data_dir: %s
store:
  backend: redis
  url: %s
  key_secret_file: %s
  timeout: 2s
  replicas: 3
upstreams:
  - name: api
    hosts: [api.test]
    connect_to: %s
    identity: [{header: apikey}]
    limits: [5/1h]
    mode: reject
`, dir, srv.URL(), secretFile, upstream.Listener.Addr())
	cfgPath := filepath.Join(dir, "config.yaml")
	os.WriteFile(cfgPath, []byte(cfg), 0o644)

	var clients []*http.Client
	for range 3 {
		addr := startCommand(t, cfgPath)
		clients = append(clients, &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: addr})}})
	}
	do := func(c *http.Client, path, key string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://api.test"+path, nil)
		req.Header.Set("apikey", key)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}

	passed := 0
	for i := range 30 {
		if do(clients[i%3], "/x", "sk_live_shared") == http.StatusOK {
			passed++
		}
	}
	mu.Lock()
	got := arrivals["sk_live_shared"]
	mu.Unlock()
	if passed != 5 || got != 5 {
		t.Errorf("%d answered 200 and the upstream saw %d of 30 requests spread over three processes, want 5 (the limit is 5/1h for the key, not per process)", passed, got)
	}

	// A throttle seen through process 0 holds the key on process 1.
	if code := do(clients[0], "/throttle", "sk_live_held"); code != http.StatusTooManyRequests {
		t.Fatalf("the upstream's throttle reached the client as %d, want 429", code)
	}
	if code := do(clients[1], "/x", "sk_live_held"); code != http.StatusTooManyRequests {
		t.Errorf("process 1 answered %d for a key the upstream throttled through process 0, want 429", code)
	}
	mu.Lock()
	got = arrivals["sk_live_held"]
	mu.Unlock()
	if got != 1 {
		t.Errorf("the upstream saw %d requests of the throttled key, want 1: the hold is not shared", got)
	}

	rdb := srv.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	keys, err := rdb.Keys(ctx, "*").Result()
	if err != nil || len(keys) < 2 {
		t.Fatalf("redis keys %v %v", keys, err)
	}
	for _, k := range keys {
		v, _ := rdb.Dump(ctx, k).Result()
		if strings.Contains(k, "sk_live") || strings.Contains(v, "sk_live") {
			t.Errorf("redis key %q holds a credential", k)
		}
		if ttl, _ := rdb.PTTL(ctx, k).Result(); ttl <= 0 && !strings.HasSuffix(k, ":schema") {
			t.Errorf("redis key %q has no TTL (%v)", k, ttl)
		}
	}
}
