// Command suite runs ratelimit-proxy's benchmark suite end to end on
// loopback: it starts the upstream, ratelimit-proxy (at log levels info and
// warn), a bare goproxy and the peers (tinyproxy, nginx, mitmproxy), drives
// load through each, runs the precision, scale and vendor-advice rows, prints
// one report and writes it to -out. bench/run.sh builds its inputs and calls
// it.
//
//	suite -bin DIR -wrk-script bench/wrk/proxy.lua -out BENCHMARKS.md [-smoke] [-rows advice]
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

type upstreamAddrs struct {
	HTTP  string `json:"http"`
	HTTPS string `json:"https"`
}

type bench struct {
	smoke     bool
	binDir    string
	work      string
	wrkScript string
	out       string
	dur       time.Duration
	warmup    time.Duration
	queued    int
	up        upstreamAddrs
	upCA      string
	targets   []*target
	missing   []string // peers that could not be started, and why
	log       io.Writer
	// quietBudget is how long, in all, the suite may wait for other
	// processes to go quiet before a cell.
	quietBudget time.Duration
	warnedBusy  bool
	rows        string
	precLimits  string
	started     time.Time
}

func (b *bench) bin(name string) string { return filepath.Join(b.binDir, name) }

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.log, "[%5.1fs] %s\n", time.Since(b.started).Seconds(), fmt.Sprintf(format, args...))
}

func main() {
	b := &bench{log: os.Stderr, started: time.Now()}
	flag.BoolVar(&b.smoke, "smoke", false, "a tiny version of every row (CI)")
	flag.StringVar(&b.binDir, "bin", "", "`dir` holding ratelimit-proxy, upstream, goproxy, loadgen and quotabench.test")
	flag.StringVar(&b.wrkScript, "wrk-script", "bench/wrk/proxy.lua", "wrk Lua `script`")
	flag.StringVar(&b.out, "out", "", "write the report to this `file` too")
	flag.DurationVar(&b.dur, "d", 8*time.Second, "measured duration of each overhead cell")
	flag.DurationVar(&b.warmup, "warmup", time.Second, "unmeasured warm-up before each overhead cell")
	flag.IntVar(&b.queued, "queued", 10000, "requests held in the queue for the memory row")
	flag.StringVar(&b.rows, "rows", "overhead,precision,scale,advice", "comma-separated row groups to run: overhead, precision, scale, advice")
	flag.StringVar(&b.precLimits, "precision-limits", "", "override the precision limits: LIMIT:WINDOWS,... (e.g. 1000/1s:3)")
	flag.DurationVar(&b.quietBudget, "quiet-budget", 3*time.Minute, "longest total wait for other processes to go quiet")
	flag.Parse()
	if b.smoke {
		b.quietBudget = 0
		b.dur, b.warmup, b.queued = 400*time.Millisecond, 0, 1000
	}
	if b.binDir == "" {
		fmt.Fprintln(os.Stderr, "suite: -bin is required")
		os.Exit(2)
	}
	var err error
	if b.work, err = os.MkdirTemp("", "rlp-bench-"); err != nil {
		fmt.Fprintln(os.Stderr, "suite:", err)
		os.Exit(1)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		stopAll()
		os.Exit(130)
	}()
	code := 0
	if err := b.run(); err != nil {
		fmt.Fprintln(os.Stderr, "suite:", err)
		code = 1
	}
	stopAll()
	os.RemoveAll(b.work)
	os.Exit(code)
}

func (b *bench) run() error {
	want := func(group string) bool { return strings.Contains(","+b.rows+",", ","+group+",") }
	if err := b.startAll(want("overhead")); err != nil {
		return err
	}
	rep := &report{b: b, env: environment()}
	if want("overhead") {
		b.logf("overhead rows: %d scenarios, %v each (+%v warm-up)", len(scenarios), b.dur, b.warmup)
		rep.overhead = b.runOverhead()
	}
	for _, t := range b.targets {
		t.p.stop() // the peers are done: free the CPU for the rest
	}
	if want("precision") {
		b.logf("precision rows")
		prec, err := b.runPrecision()
		if err != nil {
			rep.problems = append(rep.problems, "precision: "+err.Error())
		}
		rep.precision = prec
	}
	if want("advice") {
		b.logf("vendor-advice rows")
		adv, err := b.runAdvice()
		if err != nil {
			rep.problems = append(rep.problems, "vendor advice: "+err.Error())
		}
		rep.advice = adv
	}
	if want("scale") {
		b.logf("scale rows")
		if row, err := b.runQueueMemory(b.queued); err != nil {
			rep.problems = append(rep.problems, "queued-request memory: "+err.Error())
		} else {
			rep.scale = append(rep.scale, row)
			b.logf("%s: %.0f %s (%s)", row.name, row.value, row.unit, row.detail)
		}
		rows, err := b.runQuotaBench()
		if err != nil {
			rep.problems = append(rep.problems, "quota benchmarks: "+err.Error())
		}
		rep.scale = append(rep.scale, rows...)
	}
	text := rep.markdown()
	fmt.Println(text)
	if b.out != "" {
		if err := os.WriteFile(b.out, []byte(text), 0o644); err != nil {
			return err
		}
		b.logf("wrote %s", b.out)
	}
	if len(rep.problems) > 0 {
		return fmt.Errorf("%d rows failed to run: %v", len(rep.problems), rep.problems)
	}
	return nil
}

func (b *bench) startAll(targets bool) error {
	b.upCA = filepath.Join(b.work, "upstream-ca.pem")
	p, out, err := start("upstream", filepath.Join(b.work, "upstream.log"), true, b.bin("upstream"), "-ca-out", b.upCA)
	if err != nil {
		return err
	}
	if err := readJSONLine(out, 10*time.Second, &b.up); err != nil {
		return fmt.Errorf("upstream: %w", err)
	}
	_ = p
	if !targets {
		return nil
	}
	b.targets = append(b.targets, &target{key: "direct", name: "direct", http: true, https: true})

	for _, lv := range []string{"info", "warn"} {
		dir := filepath.Join(b.work, "ours-"+lv)
		name := "ratelimit-proxy (log " + lv + ")"
		p, addr, logged, err := startOurs(name, b.bin("ratelimit-proxy"), dir, oursConfig(dir, lv, b.upCA, b.up))
		if err != nil {
			return err
		}
		b.targets = append(b.targets, &target{key: "ours-" + lv, name: name, proxyURL: "http://" + addr, addr: addr,
			ca: filepath.Join(dir, "ca.pem"), http: true, https: true, p: p, logBytes: logged})
	}

	gpCA := filepath.Join(b.work, "goproxy-ca.pem")
	p, out, err = start("goproxy", filepath.Join(b.work, "goproxy.log"), true, b.bin("goproxy"), "-ca-out", gpCA, "-upstream-ca", b.upCA, "-pool", "512")
	if err != nil {
		return err
	}
	var gp struct{ Addr string }
	if err := readJSONLine(out, 10*time.Second, &gp); err != nil {
		return fmt.Errorf("goproxy: %w", err)
	}
	b.targets = append(b.targets, &target{key: "goproxy", name: "bare goproxy v1.9.3", proxyURL: "http://" + gp.Addr, addr: gp.Addr,
		ca: gpCA, http: true, https: true, p: p})

	for _, peer := range []struct {
		name, bin string
		start     func() (*target, error)
	}{
		{"tinyproxy", "tinyproxy", func() (*target, error) { return startTinyproxy(b.work, b.up) }},
		{"nginx", "nginx", func() (*target, error) { return startNginx(b.work, b.up) }},
		{"mitmproxy", "mitmdump", func() (*target, error) { return startMitmproxy(b.work, b.upCA) }},
	} {
		if _, err := exec.LookPath(peer.bin); err != nil {
			b.missing = append(b.missing, peer.name+": not installed")
			continue
		}
		t, err := peer.start()
		if err != nil {
			b.missing = append(b.missing, peer.name+": "+err.Error())
			continue
		}
		b.targets = append(b.targets, t)
	}
	for _, m := range b.missing {
		b.logf("peer missing: %s", m)
	}
	return nil
}

// combined runs a version command and returns its first line.
func combined(argv ...string) string {
	cmd := exec.Command(argv[0], argv[1:]...)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	done := make(chan struct{})
	go func() { cmd.Run(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		if cmd.Process != nil {
			cmd.Process.Kill()
		}
		return "(no answer)"
	}
	line, _, _ := bytes.Cut(bytes.TrimSpace(buf.Bytes()), []byte("\n"))
	if len(line) == 0 {
		return "(not installed)"
	}
	return string(line)
}
