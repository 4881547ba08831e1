package admin_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// needChromium returns the path of Chromium. Without it the test skips,
// saying how to get it, unless it runs under CI, where the install step
// (make deps) must have brought it.
func needChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if path, err := exec.LookPath(name); err == nil {
			return path
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("chromium is missing: the install step (make deps, scripts/deps.sh browser) must install it")
	}
	t.Skip("chromium is not installed (NO_INSTALL=1?): run `bash scripts/deps.sh browser` to test the status page")
	return ""
}

// browser starts headless Chromium for one test: a fresh profile, and
// nothing that reaches for the network on its own.
func browser(t *testing.T) context.Context {
	t.Helper()
	path := needChromium(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoSandbox, // Chromium refuses to run as root with its sandbox
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.WindowSize(1100, 760),
	)
	// Every wait in this test is bounded by this context.
	ctx, cancelTimeout := context.WithTimeout(context.Background(), 90*time.Second)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	bctx, cancelBrowser := chromedp.NewContext(allocCtx)
	t.Cleanup(func() { cancelBrowser(); cancelAlloc(); cancelTimeout() })
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	return bctx
}

// shownLimit is one limit bar as the page renders it.
type shownLimit struct {
	Upstream, Key, Limit   string
	Used, Count, Remaining string
	Queued, Cooldown       string
	Width                  string
}

// readPage returns every limit bar the page shows, read from the DOM.
const readPage = `Array.from(document.querySelectorAll("section.upstream .limit")).map(l => {
  const key = l.closest(".key"), sec = l.closest("section.upstream");
  return {Upstream: sec.dataset.upstream, Key: key.dataset.key, Limit: l.dataset.limit,
    Used: l.querySelector(".used").textContent, Count: l.querySelector(".count").textContent,
    Remaining: l.querySelector(".remaining").textContent,
    Queued: key.querySelector(".queued").textContent, Cooldown: key.querySelector(".cooldown").textContent,
    Width: l.querySelector(".fill").style.width};
})`

// TestStatusPageInChromium loads the status page in headless Chromium
// after scripted traffic, reads the numbers it renders, then sends more
// traffic and sees the page update by itself.
func TestStatusPageInChromium(t *testing.T) {
	ctx := browser(t)
	st := startStack(t, `upstreams:
  - name: closient
    hosts: [api.test]
    connect_to: UPSTREAM
    identity: [{header: apikey}]
    limits: [10/1h, 100/1d]
    mode: reject
  - name: github
    hosts: [queue.test]
    connect_to: UPSTREAM
    identity: [{header: apikey}]
    limits: [50/1h]
    mode: reject
    throttle: {min_wait: 1h, default_wait: 1h}
  - name: slack
    hosts: [slack.test]
    connect_to: UPSTREAM
    identity: [{header: apikey}]
    limits: [1/20m]
    max_wait: 1h
    learn: {mode: off}
`)
	for range 10 {
		st.send(t, "GET", "http://api.test/ok", "team-a") // fills 10/1h
	}
	for range 4 {
		st.send(t, "GET", "http://api.test/ok", "team-b")
	}
	st.send(t, "GET", "http://api.test/ok", "")
	st.send(t, "GET", "http://queue.test/ok", "ci-bot")
	st.send(t, "GET", "http://queue.test/throttle", "ci-bot") // held for an hour
	// Two requests of the worker wait for their slots (20 and 40 minutes
	// away) until the test ends.
	st.send(t, "GET", "http://slack.test/ok", "worker")
	queuedCtx, cancelQueued := context.WithCancel(context.Background())
	defer cancelQueued()
	c := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(st.proxyURL)}}
	defer c.CloseIdleConnections()
	for range 2 {
		req, _ := http.NewRequestWithContext(queuedCtx, "GET", "http://slack.test/ok", nil)
		req.Header.Set("apikey", "worker")
		go func() {
			if resp, err := c.Do(req); err == nil {
				resp.Body.Close()
			}
		}()
	}
	for queued := 0; queued < 2; {
		page := getQuotas(t, st.admin+"/v1/quotas?upstream=slack")
		if len(page.Keys) == 1 {
			queued = page.Keys[0].Queued
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the two requests of the worker were not queued: %+v", page.Keys)
		case <-time.After(10 * time.Millisecond):
		}
	}

	var shown []shownLimit
	read := func() (err error) {
		shown, err = chromedp.Run(ctx, chromedp.Evaluate[[]shownLimit](readPage))
		return err
	}
	if err := chromedp.Do(ctx,
		chromedp.Navigate(st.admin+"/?refresh=0.2"),
		chromedp.WaitVisible(chromedp.CSS(`section.upstream .limit`)),
	); err != nil {
		t.Fatalf("loading the status page: %v", err)
	}
	if err := read(); err != nil {
		t.Fatal(err)
	}
	a, b := fingerprint("team-a"), fingerprint("team-b")
	want := []string{
		// upstream key limit: used/count left, queue, cooldown, bar width
		"closient " + a + " 10/1h: 10/10 left 0, queue 0, cooldown none, bar 100%",
		"closient " + a + " 100/1d: 10/100 left 90, queue 0, cooldown none, bar 10%",
		"closient " + b + " 10/1h: 4/10 left 6, queue 0, cooldown none, bar 40%",
		"closient " + b + " 100/1d: 4/100 left 96, queue 0, cooldown none, bar 4%",
		"closient anonymous 10/1h: 1/10 left 9, queue 0, cooldown none, bar 10%",
		"closient anonymous 100/1d: 1/100 left 99, queue 0, cooldown none, bar 1%",
		"github " + fingerprint("ci-bot") + " 50/1h: 2/50 left 48, queue 0, cooldown 60m, bar 4%",
		"slack " + fingerprint("worker") + " 1/20m: 1/1 left 0, queue 2, cooldown none, bar 100%",
	}
	got := describe(shown)
	slices.Sort(got)
	slices.Sort(want)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("the page shows:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	if path := os.Getenv("STATUS_SCREENSHOT"); path != "" {
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Clean(path), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// More traffic: the page shows it without being reloaded.
	for range 3 {
		st.send(t, "GET", "http://api.test/ok", "team-b")
	}
	wantB := "closient " + b + " 10/1h: 7/10 left 3, queue 0, cooldown none, bar 70%"
	for {
		if err := read(); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(strings.Join(describe(shown), "\n"), wantB) {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the page did not refresh by itself to show %q; it shows:\n%s", wantB, strings.Join(describe(shown), "\n"))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func describe(shown []shownLimit) []string {
	var out []string
	for _, s := range shown {
		out = append(out, fmt.Sprintf("%s %s %s: %s/%s left %s, queue %s, cooldown %s, bar %s",
			s.Upstream, s.Key, s.Limit, s.Used, s.Count, s.Remaining, s.Queued, s.Cooldown, s.Width))
	}
	return out
}
