package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// scaleRow is one scale figure.
type scaleRow struct {
	name    string
	value   float64
	unit    string
	target  string // the target, for the report
	met     string // yes / no / ""
	detail  string
	command string
}

// runQueueMemory holds n requests of one key in the real proxy's queue
// (each on its own client connection) and reports the proxy's resident
// memory growth per queued request: connection, goroutine, buffers, timer
// and reservation together.
func (b *bench) runQueueMemory(n int) (scaleRow, error) {
	row := scaleRow{name: fmt.Sprintf("bytes per queued request (%d held, proxy RSS delta)", n), unit: "B/request",
		target: "<= 16384"}
	cfg := fmt.Sprintf(`listen: 127.0.0.1:0
data_dir: %s/queue
log: {level: warn}
upstreams:
  - name: q
    hosts: [q.bench.test]
    connect_to: %s
    identity: [{header: X-API-Key}]
    limits: [%d/30m]
    mode: queue
    max_wait: 1h
    max_queue: %d
`, b.work, b.up.HTTP, n, n+100)
	p, addr, _, err := startOurs("ratelimit-proxy (queue)", b.bin("ratelimit-proxy"), b.work+"/queue", cfg)
	if err != nil {
		return row, err
	}
	defer p.stop()
	pid := p.cmd.Process.Pid

	// Prime: n requests pass at once and spend the key's n/30m (pool, CA,
	// code paths warm); each of the n that follow then waits about 30
	// minutes for the slot of one of them, within max_wait (at most 1h).
	pu, _ := url.Parse("http://" + addr)
	c := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu)}, Timeout: 10 * time.Second}
	primeEnd := time.Now().Add(60 * time.Second)
	for i := range n {
		if time.Now().After(primeEnd) {
			return row, fmt.Errorf("priming %d requests took over 60s (%d sent)", n, i)
		}
		req, _ := http.NewRequest(http.MethodGet, "http://q.bench.test/", nil)
		req.Header.Set("X-API-Key", "queue-key")
		resp, err := c.Do(req)
		if err != nil {
			return row, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return row, fmt.Errorf("priming request %d: status %d", i+1, resp.StatusCode)
		}
	}
	c.Transport.(*http.Transport).CloseIdleConnections()
	time.Sleep(500 * time.Millisecond)
	rss0 := rss(pid)

	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	msg := []byte("GET http://q.bench.test/ HTTP/1.1\r\nHost: q.bench.test\r\nX-API-Key: queue-key\r\nUser-Agent: bench-queue\r\n\r\n")
	deadline := time.Now().Add(60 * time.Second)
	for range n {
		if time.Now().After(deadline) {
			return row, fmt.Errorf("opening %d connections took over 60s (%d open)", n, len(conns))
		}
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return row, fmt.Errorf("connection %d: %w", len(conns)+1, err)
		}
		conns = append(conns, c)
		if _, err := c.Write(msg); err != nil {
			return row, err
		}
	}
	// Wait until the proxy's memory stops growing (all requests parsed and
	// queued), at most 20 s.
	prev, stable := rss(pid), 0
	for end := time.Now().Add(20 * time.Second); time.Now().Before(end) && stable < 4; {
		time.Sleep(250 * time.Millisecond)
		cur := rss(pid)
		if d := cur - prev; d < prev/500 && d > -prev/500 {
			stable++
		} else {
			stable = 0
		}
		prev = cur
	}
	// None of them may have been answered: they are all waiting.
	answered := 0
	for _, c := range conns[:min(len(conns), 50)] {
		c.SetReadDeadline(time.Now().Add(time.Millisecond))
		var buf [1]byte
		if k, _ := c.Read(buf[:]); k > 0 {
			answered++
		}
	}
	row.value = float64(prev-rss0) / float64(n)
	row.detail = fmt.Sprintf("RSS %.1f MiB -> %.1f MiB; %d of the first 50 already answered (want 0)", float64(rss0)/(1<<20), float64(prev)/(1<<20), answered)
	if row.value <= 16384 {
		row.met = "yes"
	} else {
		row.met = "no"
	}
	row.command = "suite: ratelimit-proxy with limits [N/30m] spent by N requests, max_wait 1h, mode queue; then " + strconv.Itoa(n) + " raw connections each sending one request of that key"
	return row, nil
}

// runQuotaBench runs the quota-engine Go benchmarks (bench/quotabench) and
// turns their custom metrics into rows.
func (b *bench) runQuotaBench() ([]scaleRow, error) {
	keys, benchtime := "100000,1000000", "2s"
	if b.smoke {
		keys, benchtime = "10000", "100ms"
	}
	var rows []scaleRow
	runs := [][]string{
		{b.bin("quotabench.test"), "-test.run", "^$", "-test.bench", "IdleKeys", "-test.benchtime", "1x", "-keys", keys},
		{b.bin("quotabench.test"), "-test.run", "^$", "-test.bench", "Decisions", "-test.benchtime", benchtime},
	}
	for _, argv := range runs {
		out, err := runCmd(5*time.Minute, nil, argv...)
		if err != nil {
			return rows, err
		}
		cmd := "go test ./bench/quotabench " + strings.Join(argv[1:], " ")
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
				continue
			}
			name := strings.TrimPrefix(f[0], "Benchmark")
			if i := strings.LastIndexByte(name, '-'); i > 0 {
				name = name[:i] // drop -GOMAXPROCS
			}
			for i := 2; i+1 < len(f); i += 2 {
				v, err := strconv.ParseFloat(f[i], 64)
				if err != nil {
					continue
				}
				switch f[i+1] {
				case "B/key":
					r := scaleRow{name: "bytes per idle key: " + name, value: v, unit: "B/key", target: "<= 512", command: cmd}
					r.met = map[bool]string{true: "yes", false: "no"}[v <= 512]
					rows = append(rows, r)
				case "decisions/s":
					rows = append(rows, scaleRow{name: "quota decisions: " + name, value: v, unit: "decisions/s", command: cmd})
				}
			}
		}
	}
	return rows, nil
}
