// Command loadgen is the benchmark suite's HTTP load generator.
//
// Closed loop (max throughput): -c workers each send a request, read the
// answer and send the next, for -d. Open loop (fixed rate): requests are
// scheduled at -rate per second and each latency is measured from the moment
// the request was due and handed to the workers, so a slow target cannot
// hide its queueing (no coordinated omission); at most -max-inflight
// requests are in flight and a request that finds them all busy waits its
// turn (its wait counts). The client's own timer granularity (about 1 ms
// here) is not counted. Open-loop figures cover the requests that complete
// inside the measured window; unsent counts those scheduled but never sent.
//
// Requests go direct or through an HTTP proxy (-proxy; HTTPS is tunnelled
// with CONNECT, so an intercepting proxy's CA must be passed with -ca), with
// keep-alive or a new connection (and TLS handshake) per request (-newconn).
// Every run is bounded by -d and -n. The result is one JSON line.
//
//	loadgen -url http://127.0.0.1:9000/ -proxy http://127.0.0.1:8080 -c 64 -d 10s
//	loadgen -url https://127.0.0.1:9443/ -proxy http://127.0.0.1:8080 -ca ca.pem -rate 5000 -d 10s
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/bench/internal/certs"
)

// Result is what one run reports.
type Result struct {
	Mode       string  `json:"mode"` // closed or open
	Rate       float64 `json:"rate,omitempty"`
	Workers    int     `json:"workers"`
	NewConn    bool    `json:"newconn"`
	Duration   float64 `json:"duration_s"`
	OK         int64   `json:"ok"`
	Errors     int64   `json:"errors"`
	Unsent     int64   `json:"unsent"` // open loop: scheduled (warm-up included) but never sent
	RPS        float64 `json:"rps"`
	P50        float64 `json:"p50_ms"`
	P99        float64 `json:"p99_ms"`
	P999       float64 `json:"p999_ms"`
	Max        float64 `json:"max_ms"`
	FirstError string  `json:"first_error,omitempty"`
}

func main() {
	target := flag.String("url", "", "target `URL` (http or https, loopback only)")
	proxyURL := flag.String("proxy", "", "HTTP proxy `URL`; empty: direct")
	caFiles := flag.String("ca", "", "comma-separated PEM `files` of CAs to trust for HTTPS")
	workers := flag.Int("c", 32, "closed loop: concurrent workers")
	rate := flag.Float64("rate", 0, "open loop: requests per second (0: closed loop)")
	maxInflight := flag.Int("max-inflight", 1000, "open loop: most requests in flight")
	dur := flag.Duration("d", 10*time.Second, "measured duration")
	warmup := flag.Duration("warmup", time.Second, "unmeasured warm-up before -d")
	maxReq := flag.Int64("n", 5_000_000, "stop after this many measured requests")
	newConn := flag.Bool("newconn", false, "a new connection per request (no keep-alive)")
	header := flag.String("H", "X-API-Key: bench-key-1", "request `header` (Name: value); empty for none")
	timeout := flag.Duration("timeout", 10*time.Second, "per-request timeout")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the generator to `file`")
	mark := flag.Bool("mark", false, `print {"event":"measuring"} when the warm-up ends`)
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil && pprof.StartCPUProfile(f) == nil {
			defer pprof.StopCPUProfile()
		}
	}

	if *mark {
		go func(at time.Time) {
			time.Sleep(time.Until(at))
			fmt.Println(`{"event":"measuring"}`)
		}(time.Now().Add(*warmup))
	}
	res, err := run(*target, *proxyURL, *caFiles, *workers, *rate, *maxInflight, *dur, *warmup, *maxReq, *newConn, *header, *timeout)
	if err != nil {
		pprof.StopCPUProfile()
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
}

type job struct {
	i int64     // schedule index
	t time.Time // when it was handed to the workers
}

func loopback(u *url.URL) bool {
	ip := net.ParseIP(u.Hostname())
	return u.Hostname() == "localhost" || ip != nil && ip.IsLoopback()
}

func run(target, proxyURL, caFiles string, workers int, rate float64, maxInflight int, dur, warmup time.Duration,
	maxReq int64, newConn bool, header string, timeout time.Duration) (*Result, error) {
	u, err := url.Parse(target)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || !loopback(u) {
		return nil, fmt.Errorf("-url %q: want an http(s) URL on loopback", target)
	}
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConns:        0,
		DisableKeepAlives:   newConn,
		DisableCompression:  true,
		TLSHandshakeTimeout: 5 * time.Second,
	}
	if proxyURL != "" {
		p, err := url.Parse(proxyURL)
		if err != nil || !loopback(p) {
			return nil, fmt.Errorf("-proxy %q: want a proxy URL on loopback", proxyURL)
		}
		tr.Proxy = http.ProxyURL(p) // explicit: ProxyFromEnvironment never proxies loopback
	}
	if caFiles != "" {
		pool, err := certs.Pool(strings.Split(caFiles, ",")...)
		if err != nil {
			return nil, err
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool}
	}
	conc := workers
	if rate > 0 {
		conc = maxInflight
	}
	tr.MaxIdleConnsPerHost = conc
	tr.MaxConnsPerHost = 0
	client := &http.Client{Transport: tr, Timeout: timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	defer tr.CloseIdleConnections()

	var hName, hValue string
	if header != "" {
		n, v, ok := strings.Cut(header, ":")
		if !ok {
			return nil, fmt.Errorf("-H %q: want Name: value", header)
		}
		hName, hValue = strings.TrimSpace(n), strings.TrimSpace(v)
	}
	do := func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
		if err != nil {
			return err
		}
		if hName != "" {
			req.Header.Set(hName, hValue)
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		return err
	}

	var (
		ok, fails atomic.Int64
		firstErr  atomic.Pointer[string]
		mu        sync.Mutex
		lats      []time.Duration
	)
	noteErr := func(err error) {
		fails.Add(1)
		s := err.Error()
		var ue *url.Error
		if errors.As(err, &ue) {
			s = ue.Err.Error()
		}
		firstErr.CompareAndSwap(nil, &s)
	}
	ctx := context.Background()
	start := time.Now()
	measureFrom := start.Add(warmup)
	end := measureFrom.Add(dur)
	res := &Result{Workers: conc, NewConn: newConn}
	var wg sync.WaitGroup

	if rate <= 0 {
		res.Mode = "closed"
		var measured atomic.Int64
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				local := make([]time.Duration, 0, 4096)
				for {
					t0 := time.Now()
					if !t0.Before(end) || measured.Load() >= maxReq {
						break
					}
					err := do(ctx)
					t1 := time.Now()
					if t0.Before(measureFrom) {
						continue
					}
					measured.Add(1)
					if err != nil {
						noteErr(err)
						continue
					}
					ok.Add(1)
					local = append(local, t1.Sub(t0))
				}
				mu.Lock()
				lats = append(lats, local...)
				mu.Unlock()
			}()
		}
		wg.Wait()
	} else {
		res.Mode, res.Rate = "open", rate
		interval := float64(time.Second) / rate
		total := int64(float64(warmup+dur) / interval)
		if limit := int64(float64(warmup)/interval) + maxReq; total > limit {
			total = limit
		}
		jobs := make(chan job, maxInflight)
		var started atomic.Int64
		for range maxInflight {
			wg.Add(1)
			go func() {
				defer wg.Done()
				local := make([]time.Duration, 0, 1024)
				for j := range jobs {
					// A job started long after the run ended is not sent.
					if time.Since(end) > time.Second {
						continue
					}
					started.Add(1)
					err := do(ctx)
					t1 := time.Now()
					// Measured: requests that complete inside the measured
					// window, so a saturated target's backlog from the
					// warm-up still counts as the throughput it is.
					if t1.Before(measureFrom) || t1.After(end) {
						continue
					}
					if err != nil {
						noteErr(err)
						continue
					}
					ok.Add(1)
					// From the moment the request was due and handed to the
					// workers: the wait for a free worker counts, the
					// client's own timer lag (~1 ms sleep granularity) does not.
					local = append(local, t1.Sub(j.t))
				}
				mu.Lock()
				lats = append(lats, local...)
				mu.Unlock()
			}()
		}
		for i := int64(0); i < total; i++ {
			sched := start.Add(time.Duration(float64(i) * interval))
			if d := time.Until(sched); d > 0 {
				time.Sleep(d)
			}
			jobs <- job{i, time.Now()} // blocks when maxInflight jobs are queued: their wait counts
			if time.Since(end) > 2*time.Second {
				break // hopelessly behind: stop scheduling
			}
		}
		close(jobs)
		wg.Wait()
		res.Unsent = total - started.Load()
	}
	elapsed := dur.Seconds()
	if now := time.Now(); now.Before(end) { // stopped early by -n
		elapsed = now.Sub(measureFrom).Seconds()
	}
	res.Duration = elapsed
	res.OK, res.Errors = ok.Load(), fails.Load()
	res.RPS = float64(res.OK) / elapsed
	if p := firstErr.Load(); p != nil {
		res.FirstError = *p
	}
	slices.Sort(lats)
	pct := func(q float64) float64 {
		if len(lats) == 0 {
			return 0
		}
		i := int(q * float64(len(lats)))
		if i >= len(lats) {
			i = len(lats) - 1
		}
		return float64(lats[i].Microseconds()) / 1000
	}
	res.P50, res.P99, res.P999, res.Max = pct(0.50), pct(0.99), pct(0.999), pct(1)
	return res, nil
}
