package config

import (
	"net/netip"
	"strings"
	"testing"
)

const hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08" // SHA-256 of "test"

// TestListenBeyondLoopbackNeedsAccessControl (row 1 of issue 12): a proxy
// or admin address reachable from other machines is refused unless
// clients or client_tokens say who may use it, with a message saying what
// to add.
func TestListenBeyondLoopbackNeedsAccessControl(t *testing.T) {
	for _, tt := range []struct {
		yaml string
		want []string // substrings of the error; none: accepted
	}{
		{"listen: 0.0.0.0:8080\n", []string{"bad.yaml:1:", "listen 0.0.0.0:8080 is reachable beyond this machine", "add clients: [", "or client_tokens: [", "sha256sum"}},
		{"listen: ':8080'\n", []string{"bad.yaml:1:", "listen :8080"}},
		{"listen: '[::]:8080'\n", []string{"listen [::]:8080"}},
		{"listen: 10.1.2.3:8080\n", []string{"listen 10.1.2.3:8080"}},
		{"listen: proxy.internal:8080\n", []string{"listen proxy.internal:8080"}},
		{"admin: 0.0.0.0:8081\n", []string{"bad.yaml:1:", "admin 0.0.0.0:8081", "add clients"}},
		{"listen: 127.0.0.1:8080\nadmin: '[::]:8081'\n", []string{"bad.yaml:2:", "admin [::]:8081"}},
		{"listen: 127.0.0.2:8080\nadmin: '[::1]:8081'\n", nil},
		{"listen: localhost:8080\n", nil},
		{"listen: '[::ffff:127.0.0.1]:8080'\n", nil},
		{"listen: 0.0.0.0:8080\nadmin: 0.0.0.0:8081\nclients: [10.0.0.0/8]\n", nil},
		{"listen: 0.0.0.0:8080\nclient_tokens: [" + hash + "]\n", nil},
	} {
		_, err := Parse("bad.yaml", []byte(tt.yaml))
		if len(tt.want) == 0 {
			if err != nil {
				t.Errorf("%q: %v", tt.yaml, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%q: accepted", tt.yaml)
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%q: error %q does not contain %q", tt.yaml, err, w)
			}
		}
	}
	// A -listen flag applied after Load is checked by CheckAccess.
	cfg, err := Parse("ok.yaml", []byte("upstreams: []\n"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Listen = "0.0.0.0:8080"
	if err := cfg.CheckAccess(); err == nil || !strings.Contains(err.Error(), "add clients") {
		t.Errorf("CheckAccess after -listen 0.0.0.0:8080: %v", err)
	}
}

func TestAccessAndEgressFieldsAreChecked(t *testing.T) {
	for _, tt := range []struct {
		name, yaml string
		want       []string
	}{
		{"host bits set", "clients: [10.0.0.1/8]\n", []string{"bad.yaml:1:", "clients[0]", "write 10.0.0.0/8, or 10.0.0.1/32"}},
		{"not a network", "clients: [lan]\n", []string{"bad.yaml:1:", "clients[0]", "want a network"}},
		{"IPv4-mapped network", "clients: ['::ffff:10.0.0.0/104']\n", []string{"clients[0]", "write it as IPv4"}},
		{"a token, not its hash", "client_tokens: [s3cret]\n", []string{"bad.yaml:1:", "client_tokens[0]", "SHA-256", "never the token"}},
		{"a short hash", "client_tokens: [" + hash[:63] + "]\n", []string{"client_tokens[0]", "64 hex digits"}},
		{"egress rule with neither", "egress: {allow: [{ports: [443]}]}\n", []string{"bad.yaml:1:", "egress.allow[0]", "exactly one of cidrs and hosts"}},
		{"egress rule with both", "egress: {allow: [{cidrs: [10.0.0.0/8], hosts: [a.internal]}]}\n", []string{"egress.allow[0]", "exactly one"}},
		{"egress host that is an address", "egress:\n  allow:\n    - hosts: [db.internal, 10.0.0.5]\n", []string{"bad.yaml:3:", "egress.allow[0].hosts[1]", "under cidrs"}},
		{"egress host pattern inside", "egress: {allow: [{hosts: ['a.*.internal']}]}\n", []string{"egress.allow[0].hosts[0]", "*.corp.example"}},
		{"egress bare wildcard", "egress: {allow: [{hosts: ['*']}]}\n", []string{"egress.allow[0].hosts[0]"}},
		{"egress port 0", "egress: {allow: [{cidrs: [10.0.0.0/8], ports: [443, 0]}]}\n", []string{"egress.allow[0].ports[1]", "from 1 to 65535"}},
		{"egress unknown field", "egress: {allow: [{cidr: 10.0.0.0/8}]}\n", []string{"egress.allow[0].cidr", "unknown field"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("bad.yaml", []byte(tt.yaml))
			if err == nil {
				t.Fatal("Parse accepted the config")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
	cfg, err := Parse("ok.yaml", []byte(`clients: [10.0.0.0/8, 192.168.1.7, 'fd00::/8']
client_tokens: [`+strings.ToUpper(hash)+`]
egress:
  allow:
    - cidrs: [10.20.0.0/16]
      ports: [443, 8443]
    - hosts: [db.internal, "*.corp.example"]
`))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Clients[1]; netip.Prefix(got) != netip.MustParsePrefix("192.168.1.7/32") {
		t.Errorf("a single address is %v, want a /32", got)
	}
	if cfg.ClientTokens[0][0] != 0x9f || len(cfg.Egress.Allow) != 2 || cfg.Egress.Allow[0].Ports[1] != 8443 {
		t.Errorf("parsed %+v %+v", cfg.ClientTokens, cfg.Egress)
	}
}

func TestCanonicalHost(t *testing.T) {
	for in, want := range map[string]string{
		"API.Example.COM.": "api.example.com", "api.example.com.:8443": "api.example.com:8443",
		"[::1]": "::1", "[::1]:443": "[::1]:443", "a.test": "a.test",
	} {
		if got := CanonicalHost(in); got != want {
			t.Errorf("CanonicalHost(%q) = %q, want %q", in, got, want)
		}
	}
	if _, err := Parse("dup.yaml", []byte("upstreams:\n  - name: a\n    hosts: [api.test]\n  - name: b\n    hosts: [API.test.]\n")); err == nil ||
		!strings.Contains(err.Error(), "already claimed") {
		t.Errorf("api.test and API.test. claimed by two upstreams: %v", err)
	}
}
