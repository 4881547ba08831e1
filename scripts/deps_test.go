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
	"curl":        {"curl"},
	"wrk":         {"wrk"},
	"nginx-light": {"nginx"},
	"tinyproxy":   {"tinyproxy"},
	"mitmproxy":   {"mitmdump"},
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
	for _, tool := range []string{"bash", "id", "chmod"} {
		path, err := exec.LookPath(tool)
		if err != nil {
			t.Fatalf("%s: %v", tool, err)
		}
		if err := os.Symlink(path, filepath.Join(sb.bin, tool)); err != nil {
			t.Fatal(err)
		}
	}
	var cases strings.Builder
	for pkg, cmds := range packageCommands {
		fmt.Fprintf(&cases, "    %s)", pkg)
		for _, c := range cmds {
			fmt.Fprintf(&cases, " printf '#!/bin/sh\\n' > %q; chmod +x %q;", filepath.Join(sb.bin, c), filepath.Join(sb.bin, c))
		}
		cases.WriteString(" ;;\n")
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
	code, out := sb.run(t, nil, "test", "bench")
	if code != 0 {
		t.Fatalf("exit %d, want 0:\n%s", code, out)
	}
	calls := sb.aptCalls(t)
	want := []string{"update -qq", "install -y -qq --no-install-recommends curl wrk nginx-light tinyproxy mitmproxy"}
	if strings.Join(calls, "\n") != strings.Join(want, "\n") {
		t.Errorf("apt-get calls:\n%s\nwant:\n%s", strings.Join(calls, "\n"), strings.Join(want, "\n"))
	}
	for _, c := range []string{"curl", "wrk", "nginx", "tinyproxy", "mitmdump"} {
		if !sb.has(c) {
			t.Errorf("%s was not installed", c)
		}
	}
	if !strings.Contains(out, "installing with apt-get: curl wrk nginx-light tinyproxy mitmproxy") {
		t.Errorf("the output does not say what it installs:\n%s", out)
	}

	// Run again: everything is there now, nothing is installed.
	code, out = sb.run(t, nil, "test", "bench")
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
		{"the package brings no such command", "", false, "still not on PATH"},
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
