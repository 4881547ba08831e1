package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/config"
)

func runHealth(c *cli, cmd *command, args []string) error {
	fs := cmd.flags()
	path := fs.String("config", "config.yaml", "the configuration `file`, for its admin address")
	admin := fs.String("admin", "", "the admin `address` to ask, instead of the config's")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the answer")
	if ok, err := cmd.parse(c, fs, args); !ok {
		return err
	}
	if err := noArgs(cmd, fs); err != nil {
		return err
	}
	addr := *admin
	if addr == "" {
		cfg, err := config.Load(*path)
		if err != nil {
			return err
		}
		if cfg.Admin == "" {
			return fmt.Errorf("health: %s sets no admin address: set admin, or pass -admin ADDR", *path)
		}
		addr = cfg.Admin
	} else if err := config.CheckAddr(addr); err != nil {
		return fmt.Errorf("health: -admin: %w", err)
	}
	target := "http://" + reachable(addr) + "/healthz"
	// No proxy from the environment: the admin address is asked directly.
	client := &http.Client{Timeout: *timeout, Transport: &http.Transport{Proxy: nil}}
	resp, err := client.Get(target)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("unhealthy: %s: %v", target, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		first, _, _ := strings.Cut(strings.TrimSpace(string(body)), "\n")
		return fmt.Errorf("unhealthy: %s answered %s: %s", target, resp.Status, first)
	}
	fmt.Fprintf(c.stdout, "healthy: %s\n", target)
	return nil
}
