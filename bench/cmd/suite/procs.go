package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is a server the suite started. It runs in its own process group and
// is stopped by its own pid, never by name.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

var (
	procsMu sync.Mutex
	procs   []*proc
)

// start runs a command in its own process group. stdout, when wanted, is
// returned as a reader (for a "listening" line); stderr goes to logFile.
func start(name string, logFile string, wantStdout bool, argv ...string) (*proc, io.Reader, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var out io.Reader
	if wantStdout {
		r, err := cmd.StdoutPipe()
		if err != nil {
			return nil, nil, err
		}
		out = r
	}
	if logFile != "" {
		f, err := os.Create(logFile)
		if err != nil {
			return nil, nil, err
		}
		cmd.Stderr = f
		if !wantStdout {
			cmd.Stdout = f
		}
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); close(p.done) }()
	procsMu.Lock()
	procs = append(procs, p)
	procsMu.Unlock()
	return p, out, nil
}

// stop sends SIGTERM to the process group, then SIGKILL after a grace time.
func (p *proc) stop() {
	if p == nil || p.cmd.Process == nil {
		return
	}
	pgid := p.cmd.Process.Pid
	syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
	}
}

func (p *proc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

func stopAll() {
	procsMu.Lock()
	ps := procs
	procs = nil
	procsMu.Unlock()
	for i := len(ps) - 1; i >= 0; i-- {
		ps[i].stop()
	}
}

// readJSONLine reads the first JSON object line from r within timeout,
// then keeps draining r in the background.
func readJSONLine(r io.Reader, timeout time.Duration, v any) error {
	lines := make(chan []byte, 1)
	go func() {
		sc := bufio.NewScanner(r)
		sent := false
		for sc.Scan() {
			if !sent && bytes.HasPrefix(sc.Bytes(), []byte("{")) {
				lines <- append([]byte(nil), sc.Bytes()...)
				sent = true
			}
		}
		if !sent {
			close(lines)
		}
	}()
	select {
	case l, ok := <-lines:
		if !ok {
			return fmt.Errorf("no JSON line")
		}
		return json.Unmarshal(l, v)
	case <-time.After(timeout):
		return fmt.Errorf("no JSON line within %v", timeout)
	}
}

// waitListening waits until a TCP connection to addr succeeds.
func waitListening(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not listening after %v: %w", addr, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// freePort returns a loopback address with a port that was free a moment ago.
func freePort() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// tree is a process and its descendants (nginx workers, say).
func tree(root int) []int {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		f := statFields(data)
		if len(f) > 1 {
			ppid, _ := strconv.Atoi(f[1])
			children[ppid] = append(children[ppid], pid)
		}
	}
	out := []int{root}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out
}

// statFields returns the fields of /proc/PID/stat after the command name:
// [0] state, [1] ppid, ... [11] utime, [12] stime.
func statFields(data []byte) []string {
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(data[i+1:]))
}

const clockTick = 100 // USER_HZ on Linux

// cpuTime is the user+system CPU time of a process tree.
func cpuTime(root int) time.Duration {
	var ticks int64
	for _, pid := range tree(root) {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		f := statFields(data)
		if len(f) > 12 {
			u, _ := strconv.ParseInt(f[11], 10, 64)
			s, _ := strconv.ParseInt(f[12], 10, 64)
			ticks += u + s
		}
	}
	return time.Duration(ticks) * time.Second / clockTick
}

// rss is the resident memory of a process tree, in bytes.
func rss(root int) int64 {
	var total int64
	for _, pid := range tree(root) {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				total += kb << 10
			}
		}
	}
	return total
}

// runCmd runs a short command, bounded by timeout, and returns its stdout.
func runCmd(timeout time.Duration, env []string, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// ourCPU is the CPU time of this process and everything it started, dead
// children included (their time is folded into their parents' cutime).
func ourCPU() time.Duration {
	var ticks int64
	for _, pid := range tree(os.Getpid()) {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		f := statFields(data)
		if len(f) > 14 {
			for _, i := range []int{11, 12, 13, 14} {
				v, _ := strconv.ParseInt(f[i], 10, 64)
				ticks += v
			}
		}
	}
	return time.Duration(ticks) * time.Second / clockTick
}

// machineCPU is the user+nice+system CPU time of the whole machine.
func machineCPU() time.Duration {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	var ticks int64
	for _, i := range []int{1, 2, 3} {
		if i < len(f) {
			v, _ := strconv.ParseInt(f[i], 10, 64)
			ticks += v
		}
	}
	return time.Duration(ticks) * time.Second / clockTick
}

// cpuSample is a reading of the machine's and the suite's CPU time.
type cpuSample struct {
	at            time.Time
	machine, ours time.Duration
}

func sampleCPU() cpuSample { return cpuSample{time.Now(), machineCPU(), ourCPU()} }

// foreign is how many cores other processes (not the suite and what it
// started) used on average since s.
func (s cpuSample) foreign() float64 {
	now := sampleCPU()
	el := now.at.Sub(s.at)
	if el <= 0 {
		return 0
	}
	f := float64((now.machine-s.machine)-(now.ours-s.ours)) / float64(el)
	return max(f, 0)
}

// runStreaming runs a command, bounded by timeout, calling onLine for each
// line of its stdout as it comes, and returns the whole stdout.
func runStreaming(timeout time.Duration, env []string, onLine func(string), argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return "", err
	}
	if err := cmd.Start(); err != nil {
		return "", err
	}
	var out strings.Builder
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		out.WriteString(sc.Text() + "\n")
		onLine(sc.Text())
	}
	if err := cmd.Wait(); err != nil {
		return out.String(), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}
