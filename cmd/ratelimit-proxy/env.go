package main

import (
	"flag"
	"fmt"
	"net"
	"net/url"
	"strings"

	"github.com/ratelimit-proxy/ratelimit-proxy/proxy"
)

func runEnv(c *cli, cmd *command, args []string) error {
	var proxyURL *string
	cfg, _, err := configVerb(c, cmd, args, func(fs *flag.FlagSet) {
		proxyURL = fs.String("proxy", "", "the proxy's `URL` as applications reach it (default: from listen, loopback when it listens on all interfaces)")
	})
	if cfg == nil {
		return err
	}
	u := *proxyURL
	if u == "" {
		u = "http://" + reachable(cfg.Listen)
	} else if p, err := url.Parse(u); err != nil || p.Scheme != "http" || p.Host == "" {
		return fmt.Errorf("env: -proxy %q: want a URL such as http://proxy.internal:8080", u)
	}
	ca, err := proxy.LoadOrCreateCA(cfg.CACert, cfg.CAKey)
	if err != nil {
		return err
	}
	bundle := bundlePath(cfg)
	if err := proxy.WriteTrustBundle(bundle, ca); err != nil {
		return err
	}
	for _, kv := range envLines(u, bundle) {
		fmt.Fprintf(c.stdout, "export %s=%s\n", kv[0], shellQuote(kv[1]))
	}
	fmt.Fprintf(c.stdout, "# Java: keytool -importcert -noprompt -trustcacerts -alias ratelimit-proxy -file %s -keystore \"$JAVA_HOME/lib/security/cacerts\" -storepass changeit\n", shellQuote(cfg.CACert))
	return nil
}

// envLines are the variables that route an application through the proxy
// at proxyURL and make it trust bundle.
func envLines(proxyURL, bundle string) [][2]string {
	const local = "localhost,127.0.0.1,::1"
	return [][2]string{
		{"http_proxy", proxyURL}, // curl reads only the lower-case form
		{"HTTP_PROXY", proxyURL},
		{"https_proxy", proxyURL},
		{"HTTPS_PROXY", proxyURL},
		{"no_proxy", local},
		{"NO_PROXY", local},
		{"REQUESTS_CA_BUNDLE", bundle},  // Python requests (ignores SSL_CERT_FILE)
		{"SSL_CERT_FILE", bundle},       // OpenSSL, Go, Ruby, Python's ssl
		{"CURL_CA_BUNDLE", bundle},      // curl
		{"NODE_EXTRA_CA_CERTS", bundle}, // Node.js
		{"NODE_USE_ENV_PROXY", "1"},     // Node.js >= 22.21 / 24: fetch honours the proxy variables
	}
}

// reachable is a listen address as a client dials it: a wildcard host
// becomes loopback.
func reachable(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@%+=:,./-_") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
