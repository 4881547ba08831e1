package main

import (
	"bytes"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"testing"
)

var example = filepath.Join("..", "..", "config.example.yaml")

// TestEveryCommandHasHelp: -h of every command, and of the command line,
// prints usage to standard output and exits 0.
func TestEveryCommandHasHelp(t *testing.T) {
	top := "Usage: ratelimit-proxy [COMMAND] [FLAGS]"
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"-h"}, top}, {[]string{"--help"}, top}, {[]string{"help"}, top},
		{[]string{"help", "check"}, "Usage: ratelimit-proxy check"},
		{[]string{"serve", "-h"}, "Usage: ratelimit-proxy run"},
		{[]string{"ca", "path", "-h"}, "Usage: ratelimit-proxy ca"},
	}
	for _, cmd := range commands {
		cases = append(cases, struct {
			args []string
			want string
		}{[]string{cmd.name, "-h"}, "Usage: ratelimit-proxy " + cmd.name})
	}
	for _, tc := range cases {
		code, stdout, stderr := runMain(t, nil, tc.args...)
		if code != 0 || !strings.Contains(stdout, tc.want) || stderr != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 0 and %q on stdout", tc.args, code, stdout, stderr, tc.want)
		}
	}
	_, stdout, _ := runMain(t, nil, "-h")
	for _, cmd := range commands {
		if !strings.Contains(stdout, "\n  "+cmd.name+" ") {
			t.Errorf("the usage does not list %s:\n%s", cmd.name, stdout)
		}
	}
	if _, stdout, _ := runMain(t, nil, "run", "-h"); !strings.Contains(stdout, "-config file") || !strings.Contains(stdout, "-admin address") {
		t.Errorf("run -h does not list its flags:\n%s", stdout)
	}
}

// TestErrorsAreOneLineAndExitOne: every failure is one line on standard
// error, nothing on standard output, and exit status 1.
func TestErrorsAreOneLineAndExitOne(t *testing.T) {
	bad := writeConfig(t, "upstreams:\n  - name: a\n    hosts: [a.test]\n    limits: [300/lol]\n")
	noAdmin := writeConfig(t, "upstreams: []\n")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"-frobnicate"}, "run: flag provided but not defined: -frobnicate (ratelimit-proxy run -h lists the flags)"},
		{[]string{"check", "-config", bad}, "config.yaml:4: upstreams[0].limits[0]"},
		{[]string{"check", "-config", example, "extra"}, `check: unexpected argument "extra"`},
		{[]string{"run", "-config", filepath.Join(t.TempDir(), "missing.yaml")}, "reading config: open"},
		{[]string{"ca", "-config", example}, "ca: want ca path or ca export"},
		{[]string{"ca", "fetch", "-config", example}, `ca: "fetch": want ca path or ca export`},
		{[]string{"health", "-config", noAdmin}, "sets no admin address: set admin, or pass -admin ADDR"},
		{[]string{"health", "-admin", "nowhere"}, `health: -admin: "nowhere": want host:port`},
		{[]string{"env", "-config", example, "-proxy", "socks5://x"}, "env: -proxy"},
		{[]string{"version", "now"}, `version: unexpected argument "now"`},
		// A proxy reachable from other machines needs clients or
		// client_tokens (issue 12), whether the file or a flag says where
		// it listens.
		{[]string{"check", "-config", noAdmin, "-listen", "0.0.0.0:8080"}, "listen 0.0.0.0:8080 is reachable beyond this machine, and nothing says who may use it: add clients: ["},
		{[]string{"run", "-config", noAdmin, "-listen", "0.0.0.0:0"}, "add clients: ["},
		{[]string{"run", "-config", noAdmin, "-listen", "127.0.0.1:0", "-admin", "0.0.0.0:0"}, "admin 0.0.0.0:0 is reachable beyond this machine"},
	} {
		code, stdout, stderr := runMain(t, nil, tc.args...)
		if code != 1 || stdout != "" || strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, "ratelimit-proxy: ") || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 1 and one line containing %q", tc.args, code, stdout, stderr, tc.want)
		}
	}
}

// TestContainerCommandIsAccepted: the image runs config.example.yaml with
// -listen 0.0.0.0:8080 -admin 0.0.0.0:8081 (Dockerfile); its clients list
// admits that, and its HEALTHCHECK (health -admin 127.0.0.1:8081) passes.
func TestContainerCommandIsAccepted(t *testing.T) {
	code, stdout, stderr := runMain(t, nil, "check", "-config", example, "-listen", "0.0.0.0:8080", "-admin", "0.0.0.0:8081")
	if code != 0 || !strings.Contains(stdout, "listen 0.0.0.0:8080, admin 0.0.0.0:8081") ||
		!strings.Contains(stdout, "\nclients: from 127.0.0.0/8, ::1/128, 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, fc00::/7\negress for unknown hosts: public addresses\n") {
		t.Errorf("check as the container runs: exit %d, %s%s", code, stdout, stderr)
	}
	p := startMain(t, nil, "-config", example, "-data-dir", t.TempDir(), "-listen", "0.0.0.0:0", "-admin", "0.0.0.0:0")
	_, port, _ := net.SplitHostPort(p.addr(t, "admin listening"))
	if code, _, stderr := runMain(t, nil, "health", "-admin", "127.0.0.1:"+port); code != 0 {
		t.Errorf("the container's health check: exit %d %s", code, stderr)
	}
	resp, err := http.Get("http://127.0.0.1:" + port + "/ca.pem")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("/ca.pem from loopback: %d", resp.StatusCode)
	}
}

// TestCheckPrintsTheEffectivePolicy: check prints what every upstream
// enforces, profiles expanded, fields set in the file over the profile's.
func TestCheckPrintsTheEffectivePolicy(t *testing.T) {
	cfg := writeConfig(t, `client_tokens: [9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08]
egress: {allow: [{cidrs: [10.20.0.0/16], ports: [443, 8443]}, {hosts: [db.internal, "*.corp.example"]}]}
upstreams:
  - profile: closient
  - profile: clari
    limits: [60/1m]
    mode: reject
  - name: search
    hosts: [search.internal:8443]
    identity: [{header: X-Api-Key}, {source_ip: true, limits: [5/1s]}]
    limits: [50/1s, 1000/1h]
    throttle: {rewrite: false, retry: {enabled: false}}
    learn: {mode: "off"}
`)
	var out bytes.Buffer
	if err := run([]string{"check", "-config", cfg}, nil, &out, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"config.yaml: ok (3 upstreams)",
		"\nclients: with one of 1 client tokens\negress for unknown hosts: public addresses; 10.20.0.0/16 on ports 443, 8443; db.internal, *.corp.example\n",
		"upstream closient (profile closient)\n  hosts      www.closient.com\n  identity   1. header X-API-Key\n  limits     300/1m, 10000/1d (windows widened by 600ms, 1s)\n",
		`  overrides  prefix "cpk_": 100/1m, 10000/1d`,
		"  mode       queue: hold up to 30s, at most 1000 requests per key\n",
		"a throttle is 429; 400, 403 with a marker",
		"rewritten to 429 + Retry-After; wait 5s when it names none, any wait kept within 1s..1h\n",
		"upstream clari (profile clari)\n  hosts      api.clari.com\n  identity   1. header apikey\n  limits     60/1m (windows widened by 600ms)\n",
		"  mode       reject: answer 429 at once when over quota\n",
		"upstream search\n  hosts      search.internal:8443\n  identity   1. header X-Api-Key\n             2. source_ip, its own limits 5/1s (windows widened by 10ms)\n",
		"passed on as the upstream sent it",
		"  retry      off\n  learn      off: quota headers are ignored\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("check output lacks %q:\n%s", want, out.String())
		}
	}
}

// TestCAPathAndExport: ca path prints where the CA certificate is, ca
// export prints it; both create the CA as run would.
func TestCAPathAndExport(t *testing.T) {
	cfg := writeConfig(t, "upstreams: []\n")
	code, stdout, stderr := runMain(t, nil, "ca", "path", "-config", cfg)
	want := filepath.Join(filepath.Dir(cfg), "data", "ca.pem")
	if code != 0 || stdout != want+"\n" {
		t.Fatalf("ca path: exit %d, %q %q; want %s", code, stdout, stderr, want)
	}
	onDisk, err := os.ReadFile(want)
	if err != nil {
		t.Fatalf("ca path did not create the CA: %v", err)
	}
	code, stdout, _ = runMain(t, nil, "ca", "-config", cfg, "export")
	if code != 0 || stdout != string(onDisk) || !strings.HasPrefix(stdout, "-----BEGIN CERTIFICATE-----") {
		t.Fatalf("ca export: exit %d, %q; want the certificate on disk", code, stdout)
	}
	other := t.TempDir()
	if _, stdout, _ := runMain(t, nil, "ca", "path", "-config", cfg, "-data-dir", other); stdout != filepath.Join(other, "ca.pem")+"\n" {
		t.Errorf("ca path -data-dir: %q", stdout)
	}
}

// TestHealthAsksTheAdminHealthz: health exits 0 when /healthz answers 200,
// 1 with one line otherwise; the address comes from -admin or the config.
func TestHealthAsksTheAdminHealthz(t *testing.T) {
	var status atomic.Int32
	status.Store(http.StatusOK)
	admin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(int(status.Load()))
		w.Write([]byte("store unreachable\nmore"))
	}))
	defer admin.Close()
	addr := admin.Listener.Addr().String()
	cfg := writeConfig(t, "admin: "+addr+"\nupstreams: []\n")
	for _, args := range [][]string{{"health", "-admin", addr}, {"health", "-config", cfg}} {
		code, stdout, stderr := runMain(t, nil, args...)
		if code != 0 || stdout != "healthy: http://"+addr+"/healthz\n" {
			t.Errorf("%v: exit %d, %q %q; want 0", args, code, stdout, stderr)
		}
	}
	status.Store(http.StatusServiceUnavailable)
	code, _, stderr := runMain(t, nil, "health", "-admin", addr)
	if code != 1 || !strings.Contains(stderr, "answered 503 Service Unavailable: store unreachable\n") {
		t.Errorf("health of a 503: exit %d, %q", code, stderr)
	}
	admin.Close()
	code, _, stderr = runMain(t, nil, "health", "-admin", addr)
	if code != 1 || !strings.Contains(stderr, "unhealthy: http://"+addr+"/healthz: ") || strings.Count(stderr, "\n") != 1 {
		t.Errorf("health of nothing: exit %d, %q", code, stderr)
	}
}

func TestVersionLine(t *testing.T) {
	goVersion := runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH
	vcs := []debug.BuildSetting{{Key: "vcs.revision", Value: "0123456789abcdef0123"}, {Key: "vcs.time", Value: "2026-11-24T10:00:00Z"}, {Key: "vcs.modified", Value: "true"}}
	for _, tc := range []struct {
		set  string
		info *debug.BuildInfo
		want string
	}{
		{"", nil, "ratelimit-proxy devel (" + goVersion + ")"},
		{"", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, "ratelimit-proxy devel (" + goVersion + ")"},
		{"", &debug.BuildInfo{Main: debug.Module{Version: "v0.4.0"}}, "ratelimit-proxy v0.4.0 (" + goVersion + ")"},
		{"v1.2.3", &debug.BuildInfo{Main: debug.Module{Version: "v0.4.0"}, Settings: vcs}, "ratelimit-proxy v1.2.3 (commit 0123456789ab, 2026-11-24T10:00:00Z, modified; " + goVersion + ")"},
	} {
		if got := versionLine(tc.set, tc.info); got != tc.want {
			t.Errorf("versionLine(%q, %+v) = %q, want %q", tc.set, tc.info, got, tc.want)
		}
	}
}

// TestVersionIsSetAtBuildTime builds the command as the Makefile and the
// Dockerfile do, with -ldflags "-X main.version=...", and runs version.
func TestVersionIsSetAtBuildTime(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the command")
	}
	bin := filepath.Join(t.TempDir(), "ratelimit-proxy")
	args := []string{"build", "-o", bin, "-ldflags", "-X main.version=v9.8.7-test"}
	if raceEnabled {
		args = append(args, "-race") // the packages are already built that way
	}
	build := exec.Command("go", append(args, ".")...)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "version").Output()
	if err != nil || !strings.HasPrefix(string(out), "ratelimit-proxy v9.8.7-test (") {
		t.Fatalf("version of a build with -X main.version: %q %v", out, err)
	}
}
