package main

import (
	"fmt"
	"path/filepath"

	"github.com/ratelimit-proxy/ratelimit-proxy/config"
	"github.com/ratelimit-proxy/ratelimit-proxy/proxy"
)

// bundleFile is the trust bundle's name in the data directory: the system
// roots plus the proxy's CA (see proxy.WriteTrustBundle).
const bundleFile = "ca-bundle.pem"

func bundlePath(cfg *config.Config) string { return filepath.Join(cfg.DataDir, bundleFile) }

func runCA(c *cli, cmd *command, args []string) error {
	var cf configFlags
	fs := cmd.flags()
	cf.register(fs, false)
	what := ""
	if len(args) > 0 && (args[0] == "path" || args[0] == "export") {
		what, args = args[0], args[1:]
	}
	if ok, err := cmd.parse(c, fs, args); !ok {
		return err
	}
	if what == "" && fs.NArg() > 0 {
		what = fs.Arg(0)
		if what != "path" && what != "export" {
			return fmt.Errorf("ca: %q: want ca path or ca export", what)
		}
		fs.Parse(fs.Args()[1:])
	}
	if what == "" {
		return fmt.Errorf("ca: want ca path or ca export")
	}
	if err := noArgs(cmd, fs); err != nil {
		return err
	}
	cfg, err := cf.load()
	if err != nil {
		return err
	}
	ca, err := proxy.LoadOrCreateCA(cfg.CACert, cfg.CAKey)
	if err != nil {
		return err
	}
	if what == "path" {
		fmt.Fprintln(c.stdout, cfg.CACert)
		return nil
	}
	_, err = c.stdout.Write(ca.CertPEM())
	return err
}
