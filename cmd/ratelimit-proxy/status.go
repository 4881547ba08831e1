package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/admin"
	"github.com/ratelimit-proxy/ratelimit-proxy/config"
)

// runStatus asks a running proxy's admin address for /v1/quotas and prints
// each upstream and key with a bar of its quota use.
func runStatus(c *cli, cmd *command, args []string) error {
	fs := cmd.flags()
	path := fs.String("config", "config.yaml", "the configuration `file`, for its admin address")
	adminAddr := fs.String("admin", "", "the admin `address` to ask, instead of the config's")
	timeout := fs.Duration("timeout", 10*time.Second, "how long to wait for the answer")
	if ok, err := cmd.parse(c, fs, args); !ok {
		return err
	}
	if err := noArgs(cmd, fs); err != nil {
		return err
	}
	addr := *adminAddr
	if addr == "" {
		cfg, err := config.Load(*path)
		if err != nil {
			return err
		}
		if cfg.Admin == "" {
			return fmt.Errorf("status: %s sets no admin address: set admin, or pass -admin ADDR", *path)
		}
		addr = cfg.Admin
	} else if err := config.CheckAddr(addr); err != nil {
		return fmt.Errorf("status: -admin: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	// No proxy from the environment: the admin address is asked directly.
	client := &http.Client{Transport: withToken{&http.Transport{Proxy: nil}, os.Getenv(tokenEnv)}}
	page, err := admin.FetchQuotas(ctx, client, "http://"+reachable(addr))
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = fmt.Errorf("%s: %w", ue.URL, ue.Err)
		}
		return fmt.Errorf("status: %w", err)
	}
	return admin.WriteStatus(c.stdout, page)
}

// tokenEnv names the environment variable holding the client token the
// admin endpoints ask for when the configuration sets client_tokens.
const tokenEnv = "RATELIMIT_PROXY_TOKEN"

// withToken sends token, when set, as Authorization: Bearer.
type withToken struct {
	rt    http.RoundTripper
	token string
}

func (t withToken) RoundTrip(r *http.Request) (*http.Response, error) {
	if t.token != "" {
		r = r.Clone(r.Context())
		r.Header.Set("Authorization", "Bearer "+t.token)
	}
	return t.rt.RoundTrip(r)
}
