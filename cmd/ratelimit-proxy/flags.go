package main

import (
	"flag"
	"fmt"
	"strings"

	"github.com/ratelimit-proxy/ratelimit-proxy/config"
)

// configFlags are the flags that name the configuration file and override
// parts of it.
type configFlags struct {
	path, listen, admin, dataDir string
}

// register adds -config and -data-dir to fs, and -listen and -admin when
// addrs is true.
func (f *configFlags) register(fs *flag.FlagSet, addrs bool) {
	fs.StringVar(&f.path, "config", "config.yaml", "the configuration `file`")
	fs.StringVar(&f.dataDir, "data-dir", "", "data `directory` (the CA), overriding the config's data_dir")
	if addrs {
		fs.StringVar(&f.listen, "listen", "", "proxy `address`, overriding the config's listen")
		fs.StringVar(&f.admin, "admin", "", "admin `address`, overriding the config's admin (\"off\" disables)")
	}
}

// load loads the configuration file and applies the flags to it, checked
// as the file is.
func (f *configFlags) load() (*config.Config, error) {
	cfg, err := config.Load(f.path)
	if err != nil {
		return nil, err
	}
	if f.listen != "" {
		if err := config.CheckAddr(f.listen); err != nil {
			return nil, fmt.Errorf("-listen: %w", err)
		}
		cfg.Listen = f.listen
	}
	if f.dataDir != "" {
		cfg.SetDataDir(f.dataDir)
	}
	switch f.admin {
	case "":
	case "off":
		cfg.Admin = ""
	default:
		if err := config.CheckAddr(f.admin); err != nil {
			return nil, fmt.Errorf("-admin: %w (or \"off\")", err)
		}
		cfg.Admin = f.admin
	}
	if cfg.Admin != "" && cfg.Admin == cfg.Listen && !strings.HasSuffix(cfg.Listen, ":0") {
		return nil, fmt.Errorf("the admin address and the proxy address are both %s: they must differ", cfg.Listen)
	}
	return cfg, nil
}

// configVerb parses the flags of a verb that reads the configuration
// (-config, -data-dir, -listen, -admin, and those extra adds), refuses
// leftover arguments and loads it. cfg is nil when -h was asked for: the
// verb then returns err (nil) at once.
func configVerb(c *cli, cmd *command, args []string, extra func(fs *flag.FlagSet)) (cfg *config.Config, cf *configFlags, err error) {
	cf = &configFlags{}
	fs := cmd.flags()
	cf.register(fs, true)
	if extra != nil {
		extra(fs)
	}
	if ok, err := cmd.parse(c, fs, args); !ok {
		return nil, cf, err
	}
	if err := noArgs(cmd, fs); err != nil {
		return nil, cf, err
	}
	cfg, err = cf.load()
	return cfg, cf, err
}
