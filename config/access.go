package config

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Who may use the proxy (clients, client_tokens) and where it may go for
// hosts no upstream claims (egress).

// Prefix is a network written as a CIDR ("10.0.0.0/8", "fd00::/8") or a
// single address ("10.1.2.3", a /32 or /128).
type Prefix netip.Prefix

// UnmarshalYAML implements yaml.Unmarshaler. It refuses a CIDR with host
// bits set ("10.0.0.1/8": a typo for /32 or 10.0.0.0/8?) and IPv4-mapped
// IPv6 networks (write them as IPv4).
func (p *Prefix) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return &nodeError{n, "want a network such as 10.0.0.0/8 or an address such as 10.1.2.3"}
	}
	v, err := ParsePrefix(n.Value)
	if err != nil {
		return &nodeError{n, err.Error()}
	}
	*p = Prefix(v)
	return nil
}

// ParsePrefix parses a CIDR or a single address as Prefix's YAML does.
func ParsePrefix(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("%q: want a network such as 10.0.0.0/8 or an address such as 10.1.2.3", s)
		}
		s = netip.PrefixFrom(a, a.BitLen()).String()
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q: want a network such as 10.0.0.0/8 or an address such as 10.1.2.3", s)
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("%q: an IPv4-mapped network: write it as IPv4 (IPv4-mapped addresses are matched as IPv4)", s)
	}
	if m := p.Masked(); m != p {
		return netip.Prefix{}, fmt.Errorf("%q has bits set past /%d: write %s, or %s for the one address", s, p.Bits(), m, netip.PrefixFrom(p.Addr(), p.Addr().BitLen()))
	}
	return p, nil
}

func (p Prefix) String() string { return netip.Prefix(p).String() }

// TokenHash is the SHA-256 of a client token, written as 64 hex digits:
// the configuration never holds the token itself.
type TokenHash [32]byte

// UnmarshalYAML implements yaml.Unmarshaler.
func (h *TokenHash) UnmarshalYAML(n *yaml.Node) error {
	b, err := hex.DecodeString(n.Value)
	if n.Kind != yaml.ScalarNode || err != nil || len(b) != len(h) {
		return &nodeError{n, "want the SHA-256 of a token as 64 hex digits (printf %s \"$TOKEN\" | sha256sum), never the token"}
	}
	copy(h[:], b)
	return nil
}

// Egress says where the proxy may connect for hosts no upstream claims
// (tunnels and plain requests of unknown_hosts: allow). By default only
// public addresses: never loopback, private (RFC 1918, CGNAT 100.64/10),
// link-local (169.254/16 with the cloud metadata address, fe80::/10),
// unique-local (fc00::/7), unspecified, multicast, broadcast and reserved
// addresses, in IPv4 or any IPv6 form of them, nor the proxy's own
// listeners. Configured upstreams and their connect_to are always allowed.
type Egress struct {
	// Allow lists the destinations allowed besides the public ones.
	Allow []EgressRule `yaml:"allow"`
}

// EgressRule allows the addresses in CIDRs, or whatever the hosts named
// by Hosts resolve to, on Ports (every port when empty). Exactly one of
// CIDRs and Hosts is set. The proxy's own listeners are allowed only by a
// rule that lists their port.
type EgressRule struct {
	// CIDRs are networks or single addresses.
	CIDRs []Prefix `yaml:"cidrs"`
	// Hosts are host names: "db.internal", or "*.corp.example" for every
	// name under corp.example (not corp.example itself).
	Hosts []string `yaml:"hosts"`
	// Ports restrict the rule to these ports.
	Ports []int `yaml:"ports"`
}

// check refuses a rule without exactly one of cidrs and hosts, a host that
// is not a name or pattern, and a port out of range. It returns the path
// of the field at fault.
func (r EgressRule) check(path string) (string, error) {
	if (len(r.CIDRs) == 0) == (len(r.Hosts) == 0) {
		return path, errors.New("set exactly one of cidrs and hosts (and ports to restrict it)")
	}
	for i, h := range r.Hosts {
		name := strings.TrimPrefix(h, "*.")
		if _, err := netip.ParseAddr(strings.Trim(name, "[]")); err == nil {
			return fmt.Sprintf("%s.hosts[%d]", path, i), fmt.Errorf("%q is an address: list it under cidrs", h)
		}
		if !hostNameRE.MatchString(name) || len(name) > 253 || strings.Contains(name, "*") {
			return fmt.Sprintf("%s.hosts[%d]", path, i), fmt.Errorf("%q: want a host name such as db.internal, or *.corp.example for the names under corp.example", h)
		}
	}
	for i, p := range r.Ports {
		if p < 1 || p > 65535 {
			return fmt.Sprintf("%s.ports[%d]", path, i), fmt.Errorf("%d: want a port from 1 to 65535", p)
		}
	}
	return "", nil
}

// CheckAccess refuses a configuration whose proxy or admin address is
// reachable beyond this machine while nothing says who may use it:
// such a listener needs clients (the networks allowed) or client_tokens
// (credentials). Load checks the file's addresses; a caller that changes
// Listen or Admin afterwards (a -listen flag) calls CheckAccess again.
func (c *Config) CheckAccess() error {
	if len(c.Clients) > 0 || len(c.ClientTokens) > 0 {
		return nil
	}
	for _, f := range []struct{ name, addr string }{{"listen", c.Listen}, {"admin", c.Admin}} {
		if f.addr != "" && !IsLoopback(f.addr) {
			return fmt.Errorf("%s %s is reachable beyond this machine, and nothing says who may use it: "+
				"add clients: [the networks of your applications, such as 10.0.0.0/8] "+
				"or client_tokens: [the SHA-256 of a token, printf %%s \"$TOKEN\" | sha256sum], "+
				"or %s on 127.0.0.1", f.name, f.addr, f.name)
		}
	}
	return nil
}

// IsLoopback reports whether the listen address addr (host:port) is on
// loopback only: localhost, 127.0.0.0/8 or ::1. An empty host, 0.0.0.0,
// :: or any other name or address is reachable from elsewhere.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

// checkAccess is validate's part for clients, client_tokens and egress.
func (c *Config) checkAccess(fail func(path, format string, args ...any) error) error {
	for i, r := range c.Egress.Allow {
		if path, err := r.check(fmt.Sprintf("egress.allow[%d]", i)); err != nil {
			return fail(path, "%v", err)
		}
	}
	if err := c.CheckAccess(); err != nil {
		field := "listen"
		if IsLoopback(c.Listen) {
			field = "admin"
		}
		return fail(field, "%v", err)
	}
	return nil
}
