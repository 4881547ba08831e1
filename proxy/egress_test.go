package proxy_test

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
)

// Row 1 of issue 12, the open proxy: with unknown_hosts: allow (the
// default) a client could make the proxy connect to its own admin port,
// to any loopback port, to the cloud metadata address, to private ranges
// and to IPv6 forms of them, and to names resolving to loopback. The
// egress guard refuses them on the address actually dialled, in the real
// dialer's Control hook, so these tests dial over loopback sockets.

// egressProbe is one destination a client asks the proxy for.
type egressProbe struct {
	name   string
	target string // CONNECT host:port, or an absolute URL for a plain request
	class  string // in the 403's message
}

// egressProbes are the probes of row 1 against a live loopback service at
// svc (host:port) and the proxy's admin address admin.
func egressProbes(svc, admin string) []egressProbe {
	_, port, _ := net.SplitHostPort(svc)
	return []egressProbe{
		{"the admin port", admin, "the proxy's own listener"},
		{"a loopback port", svc, "a loopback address"},
		{"another loopback address", "127.0.0.2:" + port, "a loopback address"},
		{"cloud metadata", "169.254.169.254:80", "a link-local address"},
		{"RFC 1918 10/8", "10.0.0.1:443", "a private address"},
		{"RFC 1918 172.16/12", "172.16.5.4:443", "a private address"},
		{"RFC 1918 192.168/16", "192.168.1.1:443", "a private address"},
		{"CGNAT", "100.64.0.1:443", "a private address"},
		{"IPv4-mapped loopback", "[::ffff:7f00:1]:" + port, "a loopback address"},
		{"IPv4-mapped metadata", "[::ffff:169.254.169.254]:80", "a link-local address"},
		{"IPv6 unspecified", "[::]:" + port, "an unspecified address"},
		{"IPv4 unspecified", "0.0.0.0:" + port, "an unspecified address"},
		{"IPv6 loopback", "[::1]:" + port, "a loopback address"},
		{"IPv6 unique-local (AWS metadata)", "[fd00:ec2::254]:80", "a unique-local address"},
		{"a name resolving to loopback", "localhost:" + port, "a loopback address"},
		{"plain HTTP to loopback", "http://" + svc + "/plain", "a loopback address"},
		{"plain HTTP to a name resolving to loopback", "http://localhost:" + port + "/plain", "a loopback address"},
		{"plain HTTP to the admin port", "http://" + admin + "/ca.pem", "the proxy's own listener"},
	}
}

// adminListener serves p's admin endpoints on a loopback port for the
// test, as the command does.
func adminListener(t *testing.T) (net.Listener, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln, ln.Addr().String()
}

func TestEgressGuardRefusesNonPublicDestinations(t *testing.T) {
	svc := newRecorder(t, false) // a loopback service (a database, sshd) no upstream claims
	rec := newRecorder(t, false)
	aln, admin := adminListener(t)
	p := startProxy(t, fmt.Sprintf("admin: %s\n", admin)+upstreamYAML(rec, ""))
	go http.Serve(aln, p.srv.GuardAdmin(adminStub))

	for _, probe := range egressProbes(svc.addr(), admin) {
		t.Run(probe.name, func(t *testing.T) {
			before := strings.Count(p.logs.String(), "egress denied")
			status, body := egressRequest(t, p, probe.target)
			if status != http.StatusForbidden || errorCode(body) != "EGRESS_DENIED" || !strings.Contains(body, probe.class) {
				t.Fatalf("%s: %d %s, want 403 EGRESS_DENIED naming %q", probe.target, status, body, probe.class)
			}
			// The class, never the address.
			if host, _, _ := net.SplitHostPort(strings.TrimPrefix(probe.target, "http://")); host != "" && strings.Contains(body, host) {
				t.Errorf("the answer names the address: %s", body)
			}
			// Logged once, with the decision and the address dialled.
			if n := strings.Count(p.logs.String(), "egress denied") - before; n != 1 {
				t.Errorf("%d log lines name the refusal, want 1:\n%s", n, p.logs)
			}
		})
	}
	if hits := svc.all(); len(hits) > 0 {
		t.Errorf("the loopback service received %d requests", len(hits))
	}
	if !strings.Contains(p.logs.String(), `"decision":"denied"`) {
		t.Errorf("no denied decision logged:\n%s", p.logs)
	}

	// Configured upstreams, with a connect_to on loopback, are allowed.
	if code, body, _ := get(t, p.client(), "http://api.test/ok", "k"); code != 200 {
		t.Errorf("configured upstream on loopback: %d %s", code, body)
	}
	if code, body, _ := get(t, p.client(), "http://"+admin+"/healthz", ""); code != 403 {
		t.Errorf("the admin port through the proxy: %d %s", code, body)
	}
}

// egressRequest asks the proxy for target: a CONNECT, or a plain GET for
// an absolute URL. It returns the answer's status and body.
func egressRequest(t *testing.T, p *running, target string) (int, string) {
	t.Helper()
	if !strings.HasPrefix(target, "http://") {
		return rawConnect(t, p, target)
	}
	c := dialRaw(t, p, "")
	host := strings.SplitN(strings.TrimPrefix(target, "http://"), "/", 2)[0]
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, host)
	resp, body, err := c.read(http.MethodGet)
	if err != nil {
		t.Fatalf("GET %s: %v", target, err)
	}
	return resp.StatusCode, body
}

// TestEgressGuardCoversUpgrades: a protocol upgrade (WebSocket) to a host
// no upstream claims goes through the guard too.
func TestEgressGuardCoversUpgrades(t *testing.T) {
	svc := newRecorder(t, false)
	p := startProxy(t, "upstreams: []\n")
	c := dialRaw(t, p, "")
	fmt.Fprintf(c, "GET http://%s/ws HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", svc.addr(), svc.addr())
	resp, body, err := c.read(http.MethodGet)
	if err != nil || resp.StatusCode != 403 || errorCode(body) != "EGRESS_DENIED" {
		t.Fatalf("upgrade to loopback: %v %s %v, want 403 EGRESS_DENIED", resp, body, err)
	}
	if len(svc.all()) > 0 {
		t.Error("the upgrade reached the loopback service")
	}
}

// TestEgressAllowList: egress.allow opens networks, host names and ports,
// no more; the proxy's own listeners stay refused unless a rule names
// their port.
func TestEgressAllowList(t *testing.T) {
	svc := newRecorder(t, false)
	other := newRecorder(t, false)
	_, svcPort, _ := net.SplitHostPort(svc.addr())
	_, admin := adminListener(t)
	_, adminPort, _ := net.SplitHostPort(admin)

	t.Run("cidrs and ports", func(t *testing.T) {
		p := startProxy(t, fmt.Sprintf("admin: %s\negress: {allow: [{cidrs: [127.0.0.0/8], ports: [%s]}]}\nupstreams: []\n", admin, svcPort))
		if code, body, _ := get(t, p.client(), "http://"+svc.addr()+"/in", ""); code != 200 {
			t.Errorf("allowed address and port: %d %s", code, body)
		}
		if status, body := egressRequest(t, p, "http://"+other.addr()+"/out"); status != 403 || errorCode(body) != "EGRESS_DENIED" {
			t.Errorf("allowed address, another port: %d %s", status, body)
		}
		if status, body := rawConnect(t, p, "10.0.0.1:"+svcPort); status != 403 || errorCode(body) != "EGRESS_DENIED" {
			t.Errorf("allowed port, another network: %d %s", status, body)
		}
	})
	t.Run("cidrs without ports leave the proxy's own listeners refused", func(t *testing.T) {
		p := startProxy(t, fmt.Sprintf("admin: %s\n", admin)+allowLoopback+"upstreams: []\n")
		if code, _, _ := get(t, p.client(), "http://"+svc.addr()+"/in", ""); code != 200 {
			t.Errorf("allowed network: %d", code)
		}
		for _, self := range []string{admin, p.url.Host} {
			if status, body := rawConnect(t, p, self); status != 403 || !strings.Contains(body, "the proxy's own listener") {
				t.Errorf("CONNECT %s, the proxy itself: %d %s", self, status, body)
			}
		}
	})
	t.Run("a rule naming the admin port allows it", func(t *testing.T) {
		p := startProxy(t, fmt.Sprintf("admin: %s\negress: {allow: [{cidrs: [127.0.0.1], ports: [%s]}]}\nupstreams: []\n", admin, adminPort))
		c := dialRaw(t, p, "")
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", admin, admin)
		if resp, err := http.ReadResponse(c.br, nil); err != nil || resp.StatusCode != 200 {
			t.Errorf("CONNECT to the admin port named by a rule: %v %v", resp, err)
		}
	})
	t.Run("hosts", func(t *testing.T) {
		p := startProxy(t, "egress: {allow: [{hosts: [LocalHost.]}]}\nupstreams: []\n")
		if code, body, _ := get(t, p.client(), "http://localhost:"+svcPort+"/by-name", ""); code != 200 {
			t.Errorf("allowed name: %d %s", code, body)
		}
		if status, body := egressRequest(t, p, "http://"+svc.addr()+"/by-address"); status != 403 {
			t.Errorf("the same address by IP, which no rule names: %d %s", status, body)
		}
	})
}

// TestEgressGuardJudgesTheResolvedAddress: a name is judged by the
// address the dialer connects to once it is resolved (in the Control
// hook, for every address tried), not by the name: localhost resolves to
// 127.0.0.1 and ::1 here, both refused, and the loopback service never
// sees a connection. A DNS answer that changes between a look-up and the
// dial (rebinding) is judged the same way, as the dial is.
func TestEgressGuardJudgesTheResolvedAddress(t *testing.T) {
	svc := newRecorder(t, false)
	_, port, _ := net.SplitHostPort(svc.addr())
	p := startProxy(t, "upstreams: []\n")
	before := svc.newConns.Load()
	if status, body := rawConnect(t, p, "localhost:"+port); status != 403 || errorCode(body) != "EGRESS_DENIED" {
		t.Fatalf("CONNECT localhost: %d %s", status, body)
	}
	if n := svc.newConns.Load() - before; n != 0 {
		t.Errorf("the loopback service accepted %d connections", n)
	}
}
