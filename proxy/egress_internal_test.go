package proxy

import (
	"net/netip"
	"testing"

	"github.com/ratelimit-proxy/ratelimit-proxy/config"
)

func TestAddrClassNamesEveryNonPublicForm(t *testing.T) {
	for _, tt := range []struct {
		addr, class string
	}{
		{"127.0.0.1", classLoopback}, {"127.255.255.254", classLoopback}, {"::1", classLoopback},
		{"10.1.2.3", classPrivate}, {"172.16.0.1", classPrivate}, {"172.31.255.255", classPrivate},
		{"192.168.0.1", classPrivate}, {"100.64.0.1", classPrivate}, {"100.127.255.255", classPrivate},
		{"fec0::1", classPrivate},
		{"169.254.169.254", classLinkLocal}, {"fe80::1", classLinkLocal}, {"fe80::1%eth0", classLinkLocal},
		{"fc00::1", classUniqueLocal}, {"fd00:ec2::254", classUniqueLocal},
		{"0.0.0.0", classUnspecified}, {"0.1.2.3", classUnspecified}, {"::", classUnspecified},
		{"224.0.0.1", classMulticast}, {"239.255.255.250", classMulticast}, {"ff02::1", classMulticast},
		{"255.255.255.255", classBroadcast},
		{"240.0.0.1", classReserved}, {"198.18.0.1", classReserved}, {"192.0.2.1", classReserved}, {"2001:db8::1", classReserved},
		// IPv6 forms of IPv4 addresses are judged as those.
		{"::ffff:127.0.0.1", classLoopback}, {"::ffff:7f00:1", classLoopback}, {"::ffff:169.254.169.254", classLinkLocal},
		{"::ffff:10.0.0.1", classPrivate}, {"::ffff:0.0.0.0", classUnspecified},
		{"::127.0.0.1", classLoopback}, {"::7f00:1", classLoopback}, {"::a9fe:a9fe", classLinkLocal},
		{"64:ff9b::7f00:1", classLoopback}, {"64:ff9b::a00:1", classPrivate}, {"64:ff9b:1::a00:1", classPrivate},
		{"2002:7f00:1::1", classLoopback}, {"2002:a9fe:a9fe::", classLinkLocal},
		{"::8.8.8.8", classReserved}, // IPv4-compatible, deprecated: never a public destination
		// Public.
		{"8.8.8.8", ""}, {"1.1.1.1", ""}, {"172.32.0.1", ""}, {"100.128.0.1", ""}, {"169.255.0.1", ""},
		{"2606:4700:4700::1111", ""}, {"::ffff:8.8.8.8", ""}, {"64:ff9b::808:808", ""}, {"2002:808:808::1", ""},
	} {
		if got := addrClass(netip.MustParseAddr(tt.addr)); got != tt.class {
			t.Errorf("addrClass(%s) = %q, want %q", tt.addr, got, tt.class)
		}
	}
}

func TestEgressRulesMatchNetworksNamesAndPorts(t *testing.T) {
	p := compileEgress(config.Egress{Allow: []config.EgressRule{
		{CIDRs: []config.Prefix{config.Prefix(netip.MustParsePrefix("10.20.0.0/16"))}, Ports: []int{443}},
		{Hosts: []string{"db.internal", "*.Corp.Example."}},
	}})
	ap := netip.MustParseAddrPort
	for _, tt := range []struct {
		host, addr, class string
		want              bool
	}{
		{"", "10.20.1.2:443", classPrivate, true},
		{"", "[::ffff:10.20.1.2]:443", classPrivate, true},
		{"", "10.20.1.2:80", classPrivate, false},
		{"", "10.21.0.1:443", classPrivate, false},
		{"db.internal", "10.9.9.9:5432", classPrivate, true},
		{"db.internal.evil", "10.9.9.9:5432", classPrivate, false},
		{"a.corp.example", "127.0.0.1:8080", classLoopback, true},
		{"a.b.corp.example", "192.168.1.1:22", classPrivate, true},
		{"corp.example", "192.168.1.1:22", classPrivate, false},
		{"evilcorp.example", "192.168.1.1:22", classPrivate, false},
		{"a.corp.example", "127.0.0.1:8080", classSelf, false}, // the proxy itself: only a rule naming the port
		{"", "10.20.1.2:443", classSelf, true},
	} {
		if got := p.allows(tt.host, ap(tt.addr), tt.class); got != tt.want {
			t.Errorf("allows(%q, %s, %s) = %v, want %v", tt.host, tt.addr, tt.class, got, tt.want)
		}
	}
}

func TestCanonicalHostPort(t *testing.T) {
	for in, want := range map[string]string{
		"api.test": "api.test", "API.Test.": "api.test", "api.test.:443": "api.test:443", "API.TEST:8443": "api.test:8443",
		"[::1]:443": "[::1]:443", "127.0.0.1:80": "127.0.0.1:80", "": "",
	} {
		if got := canonicalHostPort(in); got != want {
			t.Errorf("canonicalHostPort(%q) = %q, want %q", in, got, want)
		}
	}
}
