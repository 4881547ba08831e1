package proxy

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/ratelimit-proxy/ratelimit-proxy/config"
)

// The egress guard, in the spirit of Smokescreen: for hosts no upstream
// claims (tunnels, and plain requests of unknown_hosts: allow), the proxy
// connects to public addresses only, unless the configuration's
// egress.allow says otherwise. The check runs in the dialer's Control
// hook, on the address actually dialled once the name is resolved: a name
// that resolves to loopback, or a DNS answer that changed since any
// earlier look-up (rebinding), is judged by where the connection would go.
// Configured upstreams and their connect_to are allowed explicitly.

// Classes of addresses the guard refuses, as the 403 and the log name them.
const (
	classLoopback    = "loopback"     // 127.0.0.0/8, ::1
	classPrivate     = "private"      // RFC 1918, CGNAT 100.64.0.0/10, fec0::/10
	classLinkLocal   = "link-local"   // 169.254.0.0/16 (cloud metadata), fe80::/10
	classUniqueLocal = "unique-local" // fc00::/7
	classUnspecified = "unspecified"  // 0.0.0.0/8, ::
	classMulticast   = "multicast"    // 224.0.0.0/4, ff00::/8
	classBroadcast   = "broadcast"    // 255.255.255.255
	classReserved    = "reserved"     // 240.0.0.0/4, benchmarking, documentation, discard
	classSelf        = "self"         // one of the proxy's own listeners
)

var (
	v4Ranges = []struct {
		p     netip.Prefix
		class string
	}{
		{netip.MustParsePrefix("0.0.0.0/8"), classUnspecified},
		{netip.MustParsePrefix("127.0.0.0/8"), classLoopback},
		{netip.MustParsePrefix("10.0.0.0/8"), classPrivate},
		{netip.MustParsePrefix("172.16.0.0/12"), classPrivate},
		{netip.MustParsePrefix("192.168.0.0/16"), classPrivate},
		{netip.MustParsePrefix("100.64.0.0/10"), classPrivate},
		{netip.MustParsePrefix("169.254.0.0/16"), classLinkLocal},
		{netip.MustParsePrefix("255.255.255.255/32"), classBroadcast},
		{netip.MustParsePrefix("224.0.0.0/4"), classMulticast},
		{netip.MustParsePrefix("240.0.0.0/4"), classReserved},
		{netip.MustParsePrefix("192.0.0.0/24"), classReserved},
		{netip.MustParsePrefix("192.0.2.0/24"), classReserved},
		{netip.MustParsePrefix("198.18.0.0/15"), classReserved},
		{netip.MustParsePrefix("198.51.100.0/24"), classReserved},
		{netip.MustParsePrefix("203.0.113.0/24"), classReserved},
	}
	v6Ranges = []struct {
		p     netip.Prefix
		class string
	}{
		{netip.MustParsePrefix("::/128"), classUnspecified},
		{netip.MustParsePrefix("::1/128"), classLoopback},
		{netip.MustParsePrefix("fe80::/10"), classLinkLocal},
		{netip.MustParsePrefix("fec0::/10"), classPrivate},
		{netip.MustParsePrefix("fc00::/7"), classUniqueLocal},
		{netip.MustParsePrefix("ff00::/8"), classMulticast},
		{netip.MustParsePrefix("100::/64"), classReserved},
		{netip.MustParsePrefix("2001:db8::/32"), classReserved},
		{netip.MustParsePrefix("::/96"), classReserved}, // IPv4-compatible, deprecated
	}
	// IPv6 forms that carry an IPv4 address in their last 32 bits, which a
	// host or gateway may turn into a connection to that IPv4 address.
	v4Embedding = []netip.Prefix{
		netip.MustParsePrefix("::/96"),          // IPv4-compatible ([::7f00:1])
		netip.MustParsePrefix("64:ff9b::/96"),   // NAT64
		netip.MustParsePrefix("64:ff9b:1::/48"), // local-use NAT64
	}
)

// addrClass names the class of a, or "" when a is public. IPv4-mapped
// IPv6 addresses ([::ffff:7f00:1]) are judged as the IPv4 address they
// map to, and so are the IPv6 forms that embed one (IPv4-compatible,
// NAT64, 6to4): an embedded non-public IPv4 address gives its class.
func addrClass(a netip.Addr) string {
	a = a.WithZone("").Unmap()
	if a.Is4() {
		for _, r := range v4Ranges {
			if r.p.Contains(a) {
				return r.class
			}
		}
		return ""
	}
	b := a.As16()
	for _, p := range v4Embedding {
		if p.Contains(a) && a != netip.IPv6Unspecified() && a != netip.IPv6Loopback() {
			if c := addrClass(netip.AddrFrom4([4]byte(b[12:]))); c != "" {
				return c
			}
		}
	}
	if b[0] == 0x20 && b[1] == 0x02 { // 6to4: 2002:AABB:CCDD::/48 carries AA.BB.CC.DD
		if c := addrClass(netip.AddrFrom4([4]byte(b[2:6]))); c != "" {
			return c
		}
	}
	for _, r := range v6Ranges {
		if r.p.Contains(a) {
			return r.class
		}
	}
	return ""
}

// egressPolicy is the compiled egress section.
type egressPolicy struct {
	rules []egressRule
}

type egressRule struct {
	prefixes []netip.Prefix
	hosts    []string // exact names, or ".suffix" for "*.suffix"
	ports    []uint16 // empty: every port
}

func compileEgress(e config.Egress) *egressPolicy {
	p := &egressPolicy{}
	for _, r := range e.Allow {
		var cr egressRule
		for _, c := range r.CIDRs {
			cr.prefixes = append(cr.prefixes, netip.Prefix(c))
		}
		for _, h := range r.Hosts {
			cr.hosts = append(cr.hosts, canonicalName(strings.TrimPrefix(h, "*")))
		}
		for _, port := range r.Ports {
			cr.ports = append(cr.ports, uint16(port))
		}
		p.rules = append(p.rules, cr)
	}
	return p
}

// allows reports whether a rule allows a connection to ap, of class,
// for a client that named host. The proxy's own listeners need a rule that
// lists their port.
func (p *egressPolicy) allows(host string, ap netip.AddrPort, class string) bool {
	a := ap.Addr().WithZone("").Unmap()
	for _, r := range p.rules {
		if len(r.ports) > 0 && !slices.Contains(r.ports, ap.Port()) || class == classSelf && len(r.ports) == 0 {
			continue
		}
		for _, pr := range r.prefixes {
			if pr.Contains(a) {
				return true
			}
		}
		for _, h := range r.hosts {
			if host == h || strings.HasPrefix(h, ".") && strings.HasSuffix(host, h) {
				return true
			}
		}
	}
	return false
}

// egressError is a connection the guard refused. The dialer returns it
// wrapped in a *net.OpError.
type egressError struct {
	class string
	addr  netip.AddrPort
}

func (e *egressError) Error() string {
	return "egress denied: " + e.addr.String() + " is " + classPhrase(e.class) + " (not in egress.allow)"
}

// classPhrase names a class in a sentence: "a loopback address".
func classPhrase(class string) string {
	switch class {
	case classSelf:
		return "the proxy's own listener"
	case classUnspecified:
		return "an unspecified address"
	}
	return "a " + class + " address"
}

// egressKey carries an *egressScope to the dialer's Control hook.
type egressKey struct{}

// egressScope is what the guard knows of one dial besides the address.
type egressScope struct {
	explicit bool          // a configured upstream or its connect_to: allowed
	host     string        // the host the client named, canonical, for host patterns
	policy   *egressPolicy // the request's egress rules
}

// withEgressScope returns ctx carrying the scope of a dial to addr, the
// host:port a client named, for a host no upstream claims.
func withEgressScope(ctx context.Context, addr string, p *egressPolicy) context.Context {
	return context.WithValue(ctx, egressKey{}, &egressScope{host: canonicalName(hostOnly(addr)), policy: p})
}

// explicitScope marks a dial for a configured upstream.
var explicitScope = &egressScope{explicit: true}

// egressGuard refuses connections the egress rules do not allow.
type egressGuard struct {
	current func() *egressPolicy // the running policy's, for a dial without a scope

	mu   sync.RWMutex
	self selfAddrs
}

// selfAddrs are the proxy's own listeners.
type selfAddrs struct {
	exact    []netip.AddrPort
	anyLocal []uint16 // ports listened on every address (0.0.0.0, ::, a name)
}

// addListener records addr (host:port) as one of the proxy's own.
func (g *egressGuard) addListener(addr string) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return
	}
	port, err := netip.ParseAddrPort(net.JoinHostPort("0.0.0.0", portStr))
	if err != nil || port.Port() == 0 {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if a, err := netip.ParseAddr(host); err == nil && !a.IsUnspecified() {
		g.self.exact = append(g.self.exact, netip.AddrPortFrom(a.WithZone("").Unmap(), port.Port()))
	} else {
		g.self.anyLocal = append(g.self.anyLocal, port.Port())
	}
}

// isSelf reports whether ap is one of the proxy's own listeners.
func (g *egressGuard) isSelf(ap netip.AddrPort) bool {
	a := ap.Addr().WithZone("").Unmap()
	g.mu.RLock()
	exact := slices.Contains(g.self.exact, netip.AddrPortFrom(a, ap.Port()))
	anyLocal := slices.Contains(g.self.anyLocal, ap.Port())
	g.mu.RUnlock()
	if exact {
		return true
	}
	if !anyLocal {
		return false
	}
	if a.IsLoopback() || a.IsUnspecified() {
		return true
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return true // cannot tell: refuse
	}
	for _, ia := range addrs {
		if n, ok := ia.(*net.IPNet); ok {
			if la, ok := netip.AddrFromSlice(n.IP); ok && la.Unmap() == a {
				return true
			}
		}
	}
	return false
}

// control is the dialer's ControlContext: it runs once the address is
// resolved, before the connection is made, for every address tried.
func (g *egressGuard) control(ctx context.Context, _, address string, _ syscall.RawConn) error {
	scope, _ := ctx.Value(egressKey{}).(*egressScope)
	if scope != nil && scope.explicit {
		return nil
	}
	if scope == nil {
		// Every dial of the proxy carries a scope; one that does not is
		// judged by the running rules, without host patterns.
		scope = &egressScope{policy: g.current()}
	}
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return &egressError{class: classReserved}
	}
	class := addrClass(ap.Addr())
	if g.isSelf(ap) {
		class = classSelf
	}
	if class == "" || scope.policy != nil && scope.policy.allows(scope.host, ap, class) {
		return nil
	}
	return &egressError{class: class, addr: ap}
}

// canonicalHostPort is host or host:port as routing matches it: in lower
// case, without a final dot on the host; the port stays. It allocates
// only when it changes something.
func canonicalHostPort(hp string) string {
	hp = strings.ToLower(hp)
	if !strings.HasSuffix(hp, ".") && !strings.Contains(hp, ".:") {
		return hp
	}
	if host, port, err := net.SplitHostPort(hp); err == nil {
		return net.JoinHostPort(strings.TrimSuffix(host, "."), port)
	}
	return strings.TrimSuffix(hp, ".")
}

// canonicalName is a host name as routing and egress rules match it: in
// lower case, without a final dot. IPv6 brackets are dropped.
func canonicalName(host string) string {
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	return strings.TrimSuffix(strings.ToLower(host), ".")
}
