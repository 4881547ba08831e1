package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
)

// precisionLimit is a vendor limit with its window scaled down.
type precisionLimit struct {
	vendor    string // the limit as vendors publish it
	limit     string // the scaled limit the proxy enforces
	windows   int    // how many windows a run lasts
	contended bool   // 100 clients only, while two busy processes compete for the CPUs
}

// precisionResult is one row: a limit and a number of concurrent clients.
type precisionResult struct {
	pl             precisionLimit
	clients        int
	n              int
	w              time.Duration
	margin         time.Duration
	arrivals       int
	maxInWindow    int
	utilization    float64
	ceiling        float64 // W/(W+margin): the most the configured margin allows
	errP50, errP99 float64 // ms, arrival minus ideal release time
	errMax         float64
	failures       int64
	foreign        float64 // cores used by other processes during the run
	skipped        string
}

// recorder is the recording upstream: it notes when each request arrived.
type recorder struct {
	mu       sync.Mutex
	arrivals map[string][]arrival // by X-API-Key
}

type arrival struct {
	id int64
	at time.Time
}

func (rec *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	id, _ := strconv.ParseInt(r.Header.Get("X-Req-Id"), 10, 64)
	rec.mu.Lock()
	rec.arrivals[r.Header.Get("X-API-Key")] = append(rec.arrivals[r.Header.Get("X-API-Key")], arrival{id, now})
	rec.mu.Unlock()
	w.Header().Set("Content-Length", "3")
	w.Write([]byte("ok\n"))
}

func (b *bench) precisionLimits() []precisionLimit {
	if b.precLimits != "" { // -precision-limits 1000/1s:3,15/500ms:10
		var out []precisionLimit
		for _, f := range strings.Split(b.precLimits, ",") {
			l, n, _ := strings.Cut(f, ":")
			w, _ := strconv.Atoi(n)
			out = append(out, precisionLimit{"custom", l, max(w, 2), false})
		}
		return out
	}
	if b.smoke {
		return []precisionLimit{
			{"15/1s", "15/100ms", 3, false},
			{"300/1m", "300/250ms", 2, false},
			{"10000/24h", "1000/500ms", 2, false},
			{"10000/24h", "1000/500ms", 2, true},
		}
	}
	return []precisionLimit{
		{"15/1s", "15/500ms", 10, false},
		{"300/1m", "300/2s", 5, false},
		{"10000/24h", "1000/5s", 4, false},
		{"10000/24h", "1000/1s", 3, true},
	}
}

func (b *bench) runPrecision() ([]precisionResult, error) {
	rec := &recorder{arrivals: map[string][]arrival{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: rec}
	go srv.Serve(ln)
	defer srv.Close()

	limits := b.precisionLimits()
	cfg := "listen: 127.0.0.1:0\ndata_dir: " + b.work + "/precision\nlog: {level: warn}\nupstreams:\n"
	for i, pl := range limits {
		cfg += fmt.Sprintf("  - name: p%d\n    hosts: [p%d.bench.test]\n    connect_to: %s\n    identity: [{header: X-API-Key}]\n    limits: [%s]\n    mode: queue\n    max_wait: 60s\n    max_queue: 10000\n",
			i, i, ln.Addr(), pl.limit)
	}
	p, addr, _, err := startOurs("ratelimit-proxy (precision)", b.bin("ratelimit-proxy"), b.work+"/precision", cfg)
	if err != nil {
		return nil, err
	}
	defer p.stop()
	proxyURL, _ := url.Parse("http://" + addr)

	var out []precisionResult
	for i, pl := range limits {
		l, err := quota.ParseLimit(pl.limit)
		if err != nil {
			return nil, err
		}
		counts := []int{1, 10, 100}
		if pl.contended {
			counts = []int{100}
		}
		for _, clients := range counts {
			key := fmt.Sprintf("precision-%d-%d", i, clients)
			host := fmt.Sprintf("p%d.bench.test", i)
			b.waitQuiet()
			var stopSpin func()
			if pl.contended {
				stopSpin = spin(2, time.Duration(pl.windows)*l.Window+10*time.Second)
			}
			cs := sampleCPU()
			r := b.precisionRun(rec, proxyURL, host, key, pl, l, clients)
			r.foreign = cs.foreign()
			if stopSpin != nil {
				stopSpin()
			}
			b.logf("precision %-10s %-10s clients %3d: max/N %.3f  util %.3f (ceiling %.3f)  wait error p50 %.2f p99 %.2f ms  failures %d  foreign %.2f cores",
				pl.vendor, pl.limit, clients, float64(r.maxInWindow)/float64(r.n), r.utilization, r.ceiling, r.errP50, r.errP99, r.failures, r.foreign)
			out = append(out, r)
		}
	}
	return out, nil
}

func (b *bench) precisionRun(rec *recorder, proxyURL *url.URL, host, key string, pl precisionLimit, l quota.Limit, clients int) precisionResult {
	r := precisionResult{pl: pl, clients: clients, n: l.Count, w: l.Window}
	r.margin = min(max(l.Window/100, 10*time.Millisecond), time.Second) // the config's default window_margin
	r.ceiling = float64(l.Window) / float64(l.Window+r.margin)
	tr := &http.Transport{Proxy: http.ProxyURL(proxyURL), MaxIdleConnsPerHost: clients, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 2 * time.Minute}

	var (
		nextID   atomic.Int64
		issuedMu sync.Mutex
		issued   = map[int64]time.Time{}
		fails    atomic.Int64
	)
	span := time.Duration(pl.windows) * l.Window
	ctx, cancel := context.WithCancel(context.Background())
	start := time.Now()
	deadline := start.Add(span)
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				id := nextID.Add(1)
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+host+"/", nil)
				req.Header.Set("X-API-Key", key)
				req.Header.Set("X-Req-Id", strconv.FormatInt(id, 10))
				issuedMu.Lock()
				issued[id] = time.Now()
				issuedMu.Unlock()
				resp, err := client.Do(req)
				if err != nil {
					if ctx.Err() == nil {
						fails.Add(1)
					}
					return
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					fails.Add(1)
				}
			}
		}()
	}
	time.Sleep(time.Until(deadline))
	cancel() // requests still queued give their slots back
	wg.Wait()
	time.Sleep(200 * time.Millisecond)
	r.failures = fails.Load()

	rec.mu.Lock()
	arr := slices.Clone(rec.arrivals[key])
	rec.mu.Unlock()
	slices.SortFunc(arr, func(a, b arrival) int { return a.at.Compare(b.at) })
	r.arrivals = len(arr)
	if len(arr) == 0 {
		r.skipped = "no request reached the upstream"
		return r
	}

	// Never over: the largest count in any half-open interval of length W.
	j := 0
	for i := range arr {
		for j < len(arr) && arr[j].at.Sub(arr[i].at) < l.Window {
			j++
		}
		r.maxInWindow = max(r.maxInWindow, j-i)
	}

	// Utilization: the mean, over every window [t, t+W) that fits inside
	// the run, of the count it holds, divided by N.
	L := span - l.Window
	var sum float64
	for _, a := range arr {
		off := a.at.Sub(start)
		lo, hi := max(off-l.Window, 0), min(off, L) // t in (off-W, off] ∩ [0, L]
		if hi > lo {
			sum += float64(hi - lo)
		}
	}
	r.utilization = sum / float64(L) / float64(l.Count)

	// Queue-wait error: each arrival against the earliest moment a perfect
	// limiter could have released it: when it was issued, or a full window
	// after the N-th previous arrival.
	var errs []float64
	issuedMu.Lock()
	for k, a := range arr {
		ideal := issued[a.id]
		if k >= l.Count {
			ideal = later(ideal, arr[k-l.Count].at.Add(l.Window))
		}
		errs = append(errs, float64(a.at.Sub(ideal).Microseconds())/1000)
	}
	issuedMu.Unlock()
	slices.Sort(errs)
	r.errP50 = errs[len(errs)/2]
	r.errP99 = errs[min(len(errs)*99/100, len(errs)-1)]
	r.errMax = errs[len(errs)-1]
	return r
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// spin starts n busy shell loops (each bounded by d) to load the CPUs, and
// returns a function that stops them.
func spin(n int, d time.Duration) func() {
	var ps []*proc
	for range n {
		p, _, err := start("spin", "", false, "timeout", fmt.Sprint(int(d.Seconds())+1), "sh", "-c", "while :; do :; done")
		if err == nil {
			ps = append(ps, p)
		}
	}
	return func() {
		for _, p := range ps {
			p.stop()
		}
	}
}
