package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// scenario is one column of load: protocol, connection reuse and offered load.
type scenario struct {
	id      string
	title   string
	https   bool
	newConn bool
	rate    float64 // fixed offered load (open loop); 0: closed-loop max
	conc    int     // closed loop: connections / workers
}

func (s scenario) max() bool { return s.rate == 0 }

// tool is what drives the load: wrk for closed-loop plain HTTP (its C event
// loop leaves the most CPU to the proxy under test), the suite's Go loadgen
// for open-loop rows and for HTTPS (wrk cannot CONNECT through a proxy).
func (s scenario) tool() string {
	if !s.https && s.max() {
		return "wrk"
	}
	return "loadgen"
}

var scenarios = []scenario{
	{id: "http-ka-max", title: "HTTP keep-alive, max (64 conns)", conc: 64},
	{id: "http-ka-1k", title: "HTTP keep-alive, 1k req/s", rate: 1000},
	{id: "http-ka-5k", title: "HTTP keep-alive, 5k req/s", rate: 5000},
	{id: "http-new-max", title: "HTTP new conn/req, max (64 conns)", newConn: true, conc: 64},
	{id: "https-ka-max", title: "HTTPS intercepted keep-alive, max (64 conns)", https: true, conc: 64},
	{id: "https-ka-1k", title: "HTTPS intercepted keep-alive, 1k req/s", https: true, rate: 1000},
	{id: "https-ka-5k", title: "HTTPS intercepted keep-alive, 5k req/s", https: true, rate: 5000},
	{id: "https-new-max", title: "HTTPS intercepted new TLS conn/req, max (32 conns)", https: true, newConn: true, conc: 32},
}

// result is one measured cell.
type result struct {
	scen    scenario
	target  *target
	rps     float64
	p50     float64 // ms
	p99     float64
	p999    float64
	ok      int64
	errors  int64
	cpu     time.Duration // proxy CPU per request (0: direct)
	rssMiB  float64
	logB    float64 // proxy log bytes per request
	foreign float64 // cores used by other processes during the run
	note    string
	command string
	skipped string
}

type loadgenOut struct {
	OK         int64   `json:"ok"`
	Errors     int64   `json:"errors"`
	Unsent     int64   `json:"unsent"`
	RPS        float64 `json:"rps"`
	P50        float64 `json:"p50_ms"`
	P99        float64 `json:"p99_ms"`
	P999       float64 `json:"p999_ms"`
	FirstError string  `json:"first_error"`
}

type wrkOut struct {
	Requests   int64 `json:"requests"`
	DurationUS int64 `json:"duration_us"`
	Connect    int64 `json:"connect"`
	Read       int64 `json:"read"`
	Write      int64 `json:"write"`
	Status     int64 `json:"status"`
	Timeout    int64 `json:"timeout"`
	P50        int64 `json:"p50_us"`
	P99        int64 `json:"p99_us"`
	P999       int64 `json:"p999_us"`
}

// command builds the argv and environment of one run.
func (b *bench) command(s scenario, t *target, dur time.Duration) ([]string, []string) {
	up := "http://" + b.up.HTTP + "/"
	if s.https {
		up = "https://" + b.up.HTTPS + "/"
	}
	if s.tool() == "wrk" {
		secs := max(int(dur.Round(time.Second)/time.Second), 1)
		argv := []string{"wrk", "-t1", fmt.Sprintf("-c%d", s.conc), fmt.Sprintf("-d%ds", secs), "--timeout", "10s", "-s", b.wrkScript}
		var env []string
		if s.newConn {
			env = append(env, "WRK_CLOSE=1")
		}
		if t.proxyURL == "" {
			argv = append(argv, up)
		} else {
			env = append(env, "WRK_TARGET="+up)
			argv = append(argv, t.proxyURL)
		}
		return argv, env
	}
	argv := []string{b.bin("loadgen"), "-url", up, "-d", dur.String(), "-warmup", b.warmup.String(), "-mark", "-timeout", b.reqTimeout().String(), "-max-inflight", "256"}
	if t.proxyURL != "" {
		argv = append(argv, "-proxy", t.proxyURL)
	}
	if s.https {
		ca := b.upCA
		if t.ca != "" {
			ca = t.ca
		}
		argv = append(argv, "-ca", ca)
	}
	if s.max() {
		argv = append(argv, "-c", fmt.Sprint(s.conc))
	} else {
		argv = append(argv, "-rate", fmt.Sprint(s.rate))
	}
	if s.newConn {
		argv = append(argv, "-newconn")
	}
	return argv, nil
}

// measure runs one cell: an unmeasured warm-up, then the measured run with
// the proxy's CPU time and log volume sampled around it.
func (b *bench) measure(s scenario, t *target) (r result) {
	r = result{scen: s, target: t}
	if t.p != nil && !t.p.alive() {
		r.skipped = "process exited"
		return r
	}
	b.waitQuiet()
	// wrk: an unmeasured warm-up run first. loadgen warms up inside the
	// measured process (its connection pool, TLS sessions to the proxy
	// included) and prints a mark when measuring starts.
	if b.warmup > 0 && s.tool() == "wrk" {
		argv, env := b.command(s, t, b.warmup)
		runCmd(b.warmup+30*time.Second, env, argv...)
	}
	argv, env := b.command(s, t, b.dur)
	r.command = strings.Join(append(env, argv...), " ")
	var (
		cpu0  time.Duration
		log0  int64
		cs    cpuSample
		began bool
	)
	begin := func() {
		began = true
		if t.p != nil {
			cpu0 = cpuTime(t.pid())
		}
		if t.logBytes != nil {
			log0 = t.logBytes.Load()
		}
		cs = sampleCPU()
	}
	var out string
	var err error
	if s.tool() == "wrk" {
		begin()
		out, err = runCmd(b.dur+60*time.Second, env, argv...)
	} else {
		out, err = runStreaming(b.warmup+b.dur+60*time.Second, env, func(line string) {
			if strings.Contains(line, `"event":"measuring"`) {
				begin()
			}
		}, argv...)
		if !began {
			begin()
		}
	}
	r.foreign = cs.foreign()
	if t.p != nil {
		cpu1 := cpuTime(t.pid())
		defer func() {
			if r.ok > 0 {
				r.cpu = (cpu1 - cpu0) / time.Duration(r.ok)
			}
			r.rssMiB = float64(rss(t.pid())) / (1 << 20)
		}()
	}
	if t.logBytes != nil && !b.smoke {
		time.Sleep(1100 * time.Millisecond) // the proxy's log buffer flushes every second
		defer func() {
			if r.ok > 0 {
				r.logB = float64(t.logBytes.Load()-log0) / float64(r.ok)
			}
		}()
	}
	if err != nil {
		r.skipped = err.Error()
		return r
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	last := lines[len(lines)-1]
	if s.tool() == "wrk" {
		var w wrkOut
		if err := json.Unmarshal([]byte(last), &w); err != nil {
			r.skipped = "wrk output: " + last
			return r
		}
		// wrk counts a connection the server closes after a response as a
		// read error and reconnects: not a failed request.
		r.ok = w.Requests - w.Status
		r.errors = w.Connect + w.Write + w.Status + w.Timeout
		r.rps = float64(r.ok) / (float64(w.DurationUS) / 1e6)
		r.p50, r.p99, r.p999 = float64(w.P50)/1000, float64(w.P99)/1000, float64(w.P999)/1000
		if w.Read > 0 {
			r.note = fmt.Sprintf("wrk saw %d connections closed by the proxy after a response (read errors; it reconnects)", w.Read)
		}
		if r.errors > 0 {
			r.note += fmt.Sprintf(" wrk errors: connect %d write %d status %d timeout %d", w.Connect, w.Write, w.Status, w.Timeout)
		}
		return r
	}
	var l loadgenOut
	if err := json.Unmarshal([]byte(last), &l); err != nil {
		r.skipped = "loadgen output: " + last
		return r
	}
	r.ok, r.errors, r.rps = l.OK, l.Errors+l.Unsent, l.RPS
	r.p50, r.p99, r.p999 = l.P50, l.P99, l.P999
	if l.FirstError != "" {
		r.note = "first error: " + l.FirstError
	}
	if l.Unsent > 0 {
		r.note = strings.TrimSpace(r.note + fmt.Sprintf(" %d scheduled requests not sent (target saturated)", l.Unsent))
	}
	return r
}

// runOverhead measures every scenario against every target that supports
// it, targets interleaved within a scenario so that ratios compare runs
// minutes apart at most.
func (b *bench) runOverhead() []result {
	var out []result
	for _, s := range scenarios {
		for _, t := range b.targets {
			if t.proxyURL != "" && (s.https && !t.https || !s.https && !t.http) {
				continue
			}
			r := b.measure(s, t)
			b.logf("%-14s %-28s %9.0f req/s  p50 %6.2f  p99 %7.2f  p99.9 %7.2f ms  cpu %6.1f us/req  err %d  foreign %.2f cores %s%s",
				s.id, t.name, r.rps, r.p50, r.p99, r.p999, float64(r.cpu.Nanoseconds())/1000, r.errors, r.foreign, r.note, r.skipped)
			out = append(out, r)
		}
	}
	return out
}

// waitQuiet waits, within the run's budget, until processes outside the
// suite use less than a fifth of a core: this machine may be shared (tests
// of another checkout, say), and their load would skew a cell.
func (b *bench) waitQuiet() {
	for b.quietBudget > 0 {
		cs := sampleCPU()
		time.Sleep(500 * time.Millisecond)
		b.quietBudget -= 500 * time.Millisecond
		if f := cs.foreign(); f < 0.2 {
			return
		} else if !b.warnedBusy {
			b.logf("other processes use %.1f cores; waiting for quiet (budget %v)", f, b.quietBudget)
			b.warnedBusy = true
		}
	}
}

// reqTimeout bounds each request of the load generator.
func (b *bench) reqTimeout() time.Duration {
	if b.smoke {
		return 2 * time.Second
	}
	return 10 * time.Second
}
