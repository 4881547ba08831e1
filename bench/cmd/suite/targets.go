package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// target is one way to reach the upstream: direct, or through a proxy.
type target struct {
	key      string // short id
	name     string // as shown in the table
	proxyURL string // "" for direct
	addr     string // proxy address, host:port
	ca       string // CA the client trusts for HTTPS through this target
	http     bool   // forwards plain HTTP
	https    bool   // intercepts HTTPS
	p        *proc
	logBytes *atomic.Int64 // bytes the proxy logged (ours)
	version  string
}

func (t *target) pid() int {
	if t.p == nil {
		return 0
	}
	return t.p.cmd.Process.Pid
}

// oursConfig is the ratelimit-proxy configuration of the overhead rows:
// limits that never bind (a per-second and a per-hour limit, as vendors
// publish them, far above the offered load).
func oursConfig(dataDir, level, upCA string, up upstreamAddrs) string {
	return fmt.Sprintf(`listen: 127.0.0.1:0
data_dir: %s
upstream_roots: [%s]
log: {level: %s}
max_idle_conns_per_host: 512
upstreams:
  - name: bench-http
    hosts: ["%s"]
    identity: [{header: X-API-Key}]
    limits: [1000000/1s, 10000000/1m]
  - name: bench-https
    hosts: ["%s"]
    identity: [{header: X-API-Key}]
    limits: [1000000/1s, 10000000/1m]
`, dataDir, upCA, level, up.HTTP, up.HTTPS)
}

// startOurs runs the ratelimit-proxy binary with cfgText on a free loopback
// port (at log level warn it logs no "listening" line) and waits until it
// accepts connections. Its log (stderr) is read and discarded, bytes
// counted, as a terminal or journald would take it.
func startOurs(name, bin, dir, cfgText string) (*proc, string, *atomic.Int64, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, "", nil, err
	}
	cfgPath := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfgText), 0o600); err != nil {
		return nil, "", nil, err
	}
	addr := freePort()
	cmd := exec.Command(bin, "-config", cfgPath, "-listen", addr, "-admin", "off")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, "", nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, "", nil, err
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	procsMu.Lock()
	procs = append(procs, p)
	procsMu.Unlock()
	var logged atomic.Int64
	var early syncBuffer
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		io.Copy(io.MultiWriter(countWriter{&logged}, &early), stderr)
	}()
	go func() { <-copied; cmd.Wait(); close(p.done) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if !p.alive() {
			return nil, "", nil, fmt.Errorf("%s exited: %s", name, early.String())
		}
		if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			c.Close()
			return p, addr, &logged, nil
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, "", nil, fmt.Errorf("%s: not listening on %s after 20s: %s", name, addr, early.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// syncBuffer keeps the first 4 KiB written to it.
type syncBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := 4096 - len(b.buf); room > 0 {
		b.buf = append(b.buf, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}

type countWriter struct{ n *atomic.Int64 }

func (c countWriter) Write(p []byte) (int, error) { c.n.Add(int64(len(p))); return len(p), nil }

func startTinyproxy(dir string, up upstreamAddrs) (*target, error) {
	addr := freePort()
	port := addr[strings.LastIndexByte(addr, ':')+1:]
	conf := filepath.Join(dir, "tinyproxy.conf")
	text := fmt.Sprintf(`Port %s
Listen 127.0.0.1
Timeout 600
MaxClients 1024
LogLevel Error
LogFile "%s/tinyproxy.log"
PidFile "%s/tinyproxy.pid"
Allow 127.0.0.1
DisableViaHeader Yes
`, port, dir, dir)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		return nil, err
	}
	p, _, err := start("tinyproxy", filepath.Join(dir, "tinyproxy.out"), false, "tinyproxy", "-d", "-c", conf)
	if err != nil {
		return nil, err
	}
	if err := waitListening(addr, 10*time.Second); err != nil {
		p.stop()
		return nil, err
	}
	return &target{key: "tinyproxy", name: "tinyproxy", proxyURL: "http://" + addr, addr: addr, http: true, p: p}, nil
}

func startNginx(dir string, up upstreamAddrs) (*target, error) {
	addr := freePort()
	prefix := filepath.Join(dir, "nginx")
	os.MkdirAll(filepath.Join(prefix, "tmp"), 0o755)
	conf := filepath.Join(prefix, "nginx.conf")
	text := fmt.Sprintf(`user root;
worker_processes 2;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path %[1]s/tmp/body;
    proxy_temp_path %[1]s/tmp/proxy;
    fastcgi_temp_path %[1]s/tmp/fastcgi;
    uwsgi_temp_path %[1]s/tmp/uwsgi;
    scgi_temp_path %[1]s/tmp/scgi;
    keepalive_requests 1000000;
    # A per-key limit far above the offered load: limit_req runs, never binds.
    limit_req_zone $http_x_api_key zone=perkey:10m rate=1000000r/s;
    upstream bench { server %[2]s; keepalive 512; keepalive_requests 1000000; }
    server {
        listen %[3]s;
        location / {
            limit_req zone=perkey burst=1000000 nodelay;
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
`, prefix, up.HTTP, addr)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		return nil, err
	}
	p, _, err := start("nginx", filepath.Join(prefix, "nginx.out"), false, "nginx", "-p", prefix, "-c", conf, "-g", "daemon off;")
	if err != nil {
		return nil, err
	}
	if err := waitListening(addr, 10*time.Second); err != nil {
		p.stop()
		return nil, err
	}
	return &target{key: "nginx", name: "nginx proxy_pass+limit_req", proxyURL: "http://" + addr, addr: addr, http: true, p: p}, nil
}

func startMitmproxy(dir, upCA string) (*target, error) {
	addr := freePort()
	port := addr[strings.LastIndexByte(addr, ':')+1:]
	confdir := filepath.Join(dir, "mitmproxy")
	os.MkdirAll(confdir, 0o700)
	p, _, err := start("mitmdump", filepath.Join(dir, "mitmdump.log"), false, "mitmdump",
		"--listen-host", "127.0.0.1", "--listen-port", port, "-q",
		"--set", "confdir="+confdir, "--set", "ssl_verify_upstream_trusted_ca="+upCA)
	if err != nil {
		return nil, err
	}
	if err := waitListening(addr, 30*time.Second); err != nil {
		p.stop()
		return nil, err
	}
	ca := filepath.Join(confdir, "mitmproxy-ca-cert.pem")
	if _, err := os.Stat(ca); err != nil {
		p.stop()
		return nil, err
	}
	return &target{key: "mitmproxy", name: "mitmproxy (mitmdump)", proxyURL: "http://" + addr, addr: addr, ca: ca, https: true, p: p}, nil
}
