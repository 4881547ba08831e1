package proxy_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestShutdownAnswersWhatStillWaitsWith503: Shutdown lets the request in
// flight finish, and answers the requests still queued at its deadline,
// plain and intercepted, with 503 and a Retry-After that is the time to
// their slot: never a closed connection, never logged as client_gone.
func TestShutdownAnswersWhatStillWaitsWith503(t *testing.T) {
	plain := newRecorder(t, false)
	secure := newRecorder(t, true)
	secure.delay.Store(int64(200 * time.Millisecond))
	p := startProxy(t, fmt.Sprintf(`upstreams:
  - name: api
    hosts: [api.test]
    connect_to: %s
    identity: [{header: apikey}]
    limits: [1/30m]
    max_wait: 1h
  - name: secure
    hosts: [other.test]
    connect_to: %s
    identity: [{header: apikey}]
    limits: [1/30m]
    max_wait: 1h
`, plain.addr(), secure.addr()))
	c := p.client()
	if code, _, _ := get(t, c, "http://api.test/a", "k"); code != 200 {
		t.Fatalf("first request: %d", code)
	}
	type result struct {
		name string
		answer
		err error
	}
	results := make(chan result, 3)
	send := func(name, url string) {
		a, err := fetch(c, url, "k")
		results <- result{name, a, err}
	}
	go send("in flight", "https://other.test/slow")
	waitFor(t, "the slow request to reach its upstream", func() bool { return len(secure.arrivals("k")) == 1 })
	go send("queued plain", "http://api.test/b")
	go send("queued intercepted", "https://other.test/c")
	waitFor(t, "two requests to queue", func() bool { return p.queued(t, "api", "k") == 1 && p.queued(t, "secure", "k") == 1 })

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := p.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown with requests left at its deadline: %v, want context.DeadlineExceeded", err)
	}
	for range 3 {
		var a result
		select {
		case a = <-results:
		case <-time.After(10 * time.Second):
			t.Fatal("a client got no answer 10s after Shutdown returned")
		}
		if a.err != nil {
			t.Errorf("%s: %v, want an answer", a.name, a.err)
			continue
		}
		if a.name == "in flight" {
			if a.code != 200 {
				t.Errorf("in flight: %d, want 200: Shutdown must let it finish", a.code)
			}
			continue
		}
		var e struct{ Error struct{ Code string } }
		json.Unmarshal([]byte(a.body), &e)
		retryAfter := a.header.Get("Retry-After")
		secs, _ := strconv.Atoi(retryAfter)
		if a.code != 503 || e.Error.Code != "PROXY_SHUTTING_DOWN" || secs < 1700 {
			t.Errorf("%s: %d %s, Retry-After %q; want 503 PROXY_SHUTTING_DOWN with Retry-After the ~1800s to its slot", a.name, a.code, a.body, retryAfter)
		}
	}
	logs := p.logs.String()
	if n := strings.Count(logs, `"decision":"shutdown"`); n != 2 || strings.Contains(logs, "client_gone") {
		t.Errorf("%d requests logged as shutdown (want 2), client_gone logged: %v", n, strings.Contains(logs, "client_gone"))
	}
	if n := len(plain.arrivals("k")) + len(secure.arrivals("k")); n != 2 {
		t.Errorf("upstreams saw %d requests, want 2", n)
	}
}
