// Tests of scripts/deps.sh, the one install step: they run it with a PATH
// that holds none of the tools it installs and a stub apt-get, so that a
// broken install step fails here on any machine, not only on a fresh one.
package scripts_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// packageCommands is what each Debian package brings, for the stub.
var packageCommands = map[string][]string{
	"curl":         {"curl"},
	"redis-server": {"redis-server"},
	"redis-tools":  {"redis-cli"},
	"wrk":          {"wrk"},
	"nginx-light":  {"nginx"},
	"tinyproxy":    {"tinyproxy"},
	"mitmproxy":    {"mitmdump"},
	"nodejs":       {"node"},
	"npm":          {"npm"},
	// A module of Debian's Python: the stub python3 finds it by this file.
	"python3-requests": {"python3-requests.module"},
}

// stubBodies are the commands whose stubs do something: npm logs its
// arguments beside apt-get's and makes node_modules; Debian's Python
// imports a module when its package was installed.
var stubBodies = map[string]string{
	"node":    `echo "${STUB_NODE_MAJOR:-20}"`,
	"npm":     `echo "npm $*" >> "$(dirname "$0")/../apt.log"; mkdir -p node_modules`,
	"python3": `[ -f "$(dirname "$0")/python3-$(echo "$2" | cut -d' ' -f2).module" ]`,
}

// sandbox is a bin directory that is the whole PATH: the few tools
// deps.sh itself runs, and a stub apt-get that logs its arguments and
// "installs" a package by creating its commands there.
type sandbox struct {
	bin string
	log string
}

// newSandbox makes the sandbox; the stub apt-get fails (exit 100) on the
// verb failOn ("update", "install" or "" for none) and creates the
// commands of the packages it installs only when installs is true.
func newSandbox(t *testing.T, failOn string, installs bool) *sandbox {
	t.Helper()
	dir := t.TempDir()
	sb := &sandbox{bin: filepath.Join(dir, "bin"), log: filepath.Join(dir, "apt.log")}
	if err := os.Mkdir(sb.bin, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tool := range []string{"bash", "id", "chmod", "dirname", "cmp", "cp", "mkdir", "cut", "uname"} {
		path, err := exec.LookPath(tool)
		if err != nil {
			t.Fatalf("%s: %v", tool, err)
		}
		if err := os.Symlink(path, filepath.Join(sb.bin, tool)); err != nil {
			t.Fatal(err)
		}
	}
	stubs := filepath.Join(dir, "stubs")
	if err := os.Mkdir(stubs, 0o755); err != nil {
		t.Fatal(err)
	}
	var cases strings.Builder
	for pkg, cmds := range packageCommands {
		fmt.Fprintf(&cases, "    %s)", pkg)
		for _, c := range cmds {
			body := "#!" + filepath.Join(sb.bin, "bash") + "\n" + stubBodies[c] + "\n"
			if err := os.WriteFile(filepath.Join(stubs, c), []byte(body), 0o755); err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&cases, " cp %q %q;", filepath.Join(stubs, c), filepath.Join(sb.bin, c))
		}
		cases.WriteString(" ;;\n")
	}
	python := "#!" + filepath.Join(sb.bin, "bash") + "\n" + stubBodies["python3"] + "\n"
	if err := os.WriteFile(filepath.Join(sb.bin, "debian-python3"), []byte(python), 0o755); err != nil {
		t.Fatal(err)
	}
	install := ""
	if installs {
		install = fmt.Sprintf(`if [ "$1" = install ]; then
  for p in "$@"; do
    case "$p" in
%s    esac
  done
fi
`, cases.String())
	}
	stub := fmt.Sprintf("#!%s\necho \"$*\" >> %q\nif [ \"$1\" = %q ]; then exit 100; fi\n%s", filepath.Join(sb.bin, "bash"), sb.log, failOn, install)
	if err := os.WriteFile(filepath.Join(sb.bin, "apt-get"), []byte(stub), 0o755); err != nil {
		t.Fatal(err)
	}
	return sb
}

// run runs deps.sh with the sandbox as PATH and the given extra
// environment, and returns its exit code and output.
func (sb *sandbox) run(t *testing.T, env []string, groups ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(filepath.Join(sb.bin, "bash"), append([]string{"deps.sh"}, groups...)...)
	cmd.Env = append([]string{"PATH=" + sb.bin, "HOME=" + t.TempDir()}, env...)
	out, err := cmd.CombinedOutput()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("running deps.sh: %v", err)
		}
		code = ee.ExitCode()
	}
	return code, string(out)
}

func (sb *sandbox) aptCalls(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile(sb.log)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(data)), "\n")
}

func (sb *sandbox) has(cmd string) bool {
	_, err := os.Stat(filepath.Join(sb.bin, cmd))
	return err == nil
}

func TestDepsInstallsEveryMissingPackageAndChecksTheResult(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("the install path runs apt-get directly only as root; otherwise through sudo")
	}
	sb := newSandbox(t, "", true)
	code, out := sb.run(t, nil, "test", "redis", "bench")
	if code != 0 {
		t.Fatalf("exit %d, want 0:\n%s", code, out)
	}
	calls := sb.aptCalls(t)
	want := []string{"update -qq", "install -y -qq --no-install-recommends curl redis-server redis-tools wrk nginx-light tinyproxy mitmproxy"}
	if strings.Join(calls, "\n") != strings.Join(want, "\n") {
		t.Errorf("apt-get calls:\n%s\nwant:\n%s", strings.Join(calls, "\n"), strings.Join(want, "\n"))
	}
	for _, c := range []string{"curl", "redis-server", "redis-cli", "wrk", "nginx", "tinyproxy", "mitmdump"} {
		if !sb.has(c) {
			t.Errorf("%s was not installed", c)
		}
	}
	if !strings.Contains(out, "installing with apt-get: curl redis-server redis-tools wrk nginx-light tinyproxy mitmproxy") {
		t.Errorf("the output does not say what it installs:\n%s", out)
	}

	// Run again: everything is there now, nothing is installed.
	code, out = sb.run(t, nil, "test", "redis", "bench")
	if code != 0 || len(sb.aptCalls(t)) != 2 {
		t.Errorf("second run: exit %d, %d apt-get calls in all (want 0 and 2):\n%s", code, len(sb.aptCalls(t)), out)
	}
}

func TestDepsFailsWhenTheInstallFailsOrLeavesACommandMissing(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("the install path runs apt-get directly only as root")
	}
	tests := []struct {
		name     string
		failOn   string
		installs bool
		want     string
	}{
		{"apt-get update fails", "update", true, "apt-get update failed"},
		{"apt-get install fails", "install", true, "apt-get install curl failed"},
		{"the package brings no such command", "", false, "still missing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sb := newSandbox(t, tt.failOn, tt.installs)
			code, out := sb.run(t, nil, "test")
			if code == 0 || !strings.Contains(out, tt.want) {
				t.Fatalf("exit %d, output %q; want a failure saying %q", code, out, tt.want)
			}
		})
	}
}

func TestDepsNoInstallSkipsVisiblyButNeverUnderCI(t *testing.T) {
	tests := []struct {
		name     string
		env      []string
		wantCode int
		want     string
	}{
		{"user machine", []string{"NO_INSTALL=1"}, 0, "NO_INSTALL=1: not installing curl"},
		{"CI", []string{"NO_INSTALL=1", "CI=true"}, 1, "under CI=true"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sb := newSandbox(t, "", true)
			code, out := sb.run(t, tt.env, "test")
			if code != tt.wantCode || !strings.Contains(out, tt.want) {
				t.Fatalf("exit %d, output %q; want exit %d saying %q", code, out, tt.wantCode, tt.want)
			}
			if calls := sb.aptCalls(t); len(calls) != 0 {
				t.Errorf("NO_INSTALL=1 ran apt-get: %v", calls)
			}
		})
	}
}

func TestDepsRefusesAnUnknownGroup(t *testing.T) {
	sb := newSandbox(t, "", true)
	if code, out := sb.run(t, nil, "redis-typo"); code != 2 || !strings.Contains(out, `unknown group "redis-typo"`) {
		t.Fatalf("exit %d, output %q; want exit 2 naming the group", code, out)
	}
}

// sdkEnv is the environment of the sdk group in a sandbox: Debian's Python
// is the sandbox's stub, and the npm project a fresh one with a lock file.
func (sb *sandbox) sdkEnv(t *testing.T) (env []string, sdkDir string) {
	t.Helper()
	sdkDir = t.TempDir()
	if err := os.WriteFile(filepath.Join(sdkDir, "package-lock.json"), []byte(`{"lockfileVersion": 3}`), 0o644); err != nil {
		t.Fatal(err)
	}
	return []string{"PYTHON3=" + filepath.Join(sb.bin, "debian-python3"), "SDK_DIR=" + sdkDir}, sdkDir
}

func TestDepsSDKInstallsNodeAndPythonRequestsThenRunsNpmCiOnce(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("the install path runs apt-get directly only as root; otherwise through sudo")
	}
	sb := newSandbox(t, "", true)
	env, sdkDir := sb.sdkEnv(t)
	code, out := sb.run(t, env, "sdk")
	if code != 0 {
		t.Fatalf("exit %d, want 0:\n%s", code, out)
	}
	want := []string{"update -qq", "install -y -qq --no-install-recommends nodejs npm python3-requests", "npm ci --no-audit --no-fund --loglevel=error"}
	if calls := sb.aptCalls(t); strings.Join(calls, "\n") != strings.Join(want, "\n") {
		t.Errorf("calls:\n%s\nwant:\n%s", strings.Join(calls, "\n"), strings.Join(want, "\n"))
	}
	if _, err := os.Stat(filepath.Join(sdkDir, "node_modules")); err != nil {
		t.Errorf("npm ci did not run in SDK_DIR: %v", err)
	}

	// Again: everything is there, nothing runs.
	if code, out := sb.run(t, env, "sdk"); code != 0 || len(sb.aptCalls(t)) != 3 || !strings.Contains(out, "are installed") {
		t.Errorf("second run: exit %d, %d calls in all (want 0 and 3):\n%s", code, len(sb.aptCalls(t)), out)
	}

	// A new lock file: npm ci again.
	if err := os.WriteFile(filepath.Join(sdkDir, "package-lock.json"), []byte(`{"lockfileVersion": 3, "packages": {}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, out := sb.run(t, env, "sdk"); code != 0 || len(sb.aptCalls(t)) != 4 {
		t.Errorf("after the lock file changed: exit %d, %d calls in all (want 0 and 4):\n%s", code, len(sb.aptCalls(t)), out)
	}
}

// TestDepsSDKBringsNode20WhenTheMachinesIsOlder: Debian 12's own nodejs is
// 18, older than the SDKs need; the install step then takes Node.js 20 from
// the npm registry into the SDK project (once) and runs npm ci with it.
func TestDepsSDKBringsNode20WhenTheMachinesIsOlder(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("the install path runs apt-get directly only as root; otherwise through sudo")
	}
	sb := newSandbox(t, "", true)
	env, sdkDir := sb.sdkEnv(t)
	env = append(env, "STUB_NODE_MAJOR=18")
	code, out := sb.run(t, env, "sdk")
	if code != 0 {
		t.Fatalf("exit %d, want 0:\n%s", code, out)
	}
	calls := sb.aptCalls(t)
	want := "npm install --prefix " + filepath.Join(sdkDir, ".node") + " --no-audit --no-fund --loglevel=error node-linux-"
	found := false
	for _, c := range calls {
		found = found || strings.HasPrefix(c, want)
	}
	if !found || calls[len(calls)-1] != "npm ci --no-audit --no-fund --loglevel=error" {
		t.Errorf("calls:\n%s\nwant one starting %q, then npm ci", strings.Join(calls, "\n"), want)
	}
	if !strings.Contains(out, "older than the SDKs need (20)") {
		t.Errorf("the output does not say why it installs Node.js:\n%s", out)
	}
}

func TestDepsSDKNoInstallSkipsVisiblyButNeverUnderCI(t *testing.T) {
	tests := []struct {
		name     string
		env      []string
		wantCode int
		want     string
	}{
		{"user machine", []string{"NO_INSTALL=1"}, 0, "not running npm ci"},
		{"CI", []string{"NO_INSTALL=1", "CI=true"}, 1, "under CI=true"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sb := newSandbox(t, "", true)
			// The packages are there; only the npm project is not installed.
			for _, c := range []string{"node", "npm", "python3-requests.module"} {
				if err := os.WriteFile(filepath.Join(sb.bin, c), []byte("#!/bin/sh\n"), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			env, _ := sb.sdkEnv(t)
			code, out := sb.run(t, append(env, tt.env...), "sdk")
			if code != tt.wantCode || !strings.Contains(out, tt.want) {
				t.Fatalf("exit %d, output %q; want exit %d saying %q", code, out, tt.wantCode, tt.want)
			}
			if calls := sb.aptCalls(t); len(calls) != 0 {
				t.Errorf("NO_INSTALL=1 ran %v", calls)
			}
		})
	}
}
