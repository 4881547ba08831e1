package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// version is the release, set at build time:
//
//	go build -ldflags "-X main.version=v1.2.3" ./cmd/ratelimit-proxy
//
// Empty, the module's version from the build information is shown.
var version string

func runVersion(c *cli, cmd *command, args []string) error {
	fs := cmd.flags()
	if ok, err := cmd.parse(c, fs, args); !ok {
		return err
	}
	if err := noArgs(cmd, fs); err != nil {
		return err
	}
	info, _ := debug.ReadBuildInfo()
	fmt.Fprintln(c.stdout, versionLine(version, info))
	return nil
}

// versionLine describes the build: "ratelimit-proxy v1.2.3 (commit
// 0123456789ab, 2026-11-24T10:00:00Z, modified; go1.26.0 linux/amd64)".
// set is the version set with -ldflags; info may be nil.
func versionLine(set string, info *debug.BuildInfo) string {
	v := set
	var details []string
	if info != nil {
		if v == "" && info.Main.Version != "" && info.Main.Version != "(devel)" {
			v = info.Main.Version
		}
		var rev, at string
		modified := false
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.time":
				at = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
		if rev != "" {
			details = append(details, "commit "+rev[:min(len(rev), 12)])
		}
		if at != "" {
			details = append(details, at)
		}
		if modified {
			details = append(details, "modified")
		}
	}
	if v == "" {
		v = "devel"
	}
	goVersion := runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH
	if len(details) > 0 {
		return fmt.Sprintf("ratelimit-proxy %s (%s; %s)", v, strings.Join(details, ", "), goVersion)
	}
	return fmt.Sprintf("ratelimit-proxy %s (%s)", v, goVersion)
}
