package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/config"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
	"github.com/ratelimit-proxy/ratelimit-proxy/signals"
)

// Policy is the compiled form of the part of a configuration that a reload
// may change: the upstreams (hosts, connect_to, identity, limits,
// overrides, mode, throttle, learning) and what to do with hosts no
// upstream claims. It holds typed values only, no YAML strings and no
// pointers into the configuration, and it never changes once compiled: a
// Server swaps it whole, and a request keeps the Policy it started with.
type Policy struct {
	routes       router
	unknownHosts unknownHosts
	connectTo    map[string]string    // host or host:port -> its connect_to (a reload that changes it closes idle connections)
	upstreams    []*upstream          // in configuration order
	egress       *egressPolicy        // where hosts no upstream claims may go besides public addresses
	reachedAt    map[string]*upstream // each connect_to (hostPortKey) -> its upstream
	clients      clientAccess         // who may use the proxy
}

// unknownHosts says what the proxy does with a host no upstream claims.
type unknownHosts uint8

const (
	allowUnknown unknownHosts = iota // tunnel or forward without limits
	denyUnknown                      // answer 403
)

// Compile checks cfg and compiles its upstreams into a Policy. It returns
// an error naming the field at fault, never panics, for any cfg, including
// one that did not go through config.Parse: every field Parse would have
// defaulted must be set.
func Compile(cfg *config.Config) (*Policy, error) { return compilePolicy(cfg, nil) }

// compilePolicy is Compile carrying over, from prev, what the upstreams of the
// same name learned that is not kept in the store (the upstream buckets
// routes fall into, the window margin learned from throttles).
func compilePolicy(cfg *config.Config, prev *Policy) (*Policy, error) {
	if cfg == nil {
		return nil, errors.New("no configuration")
	}
	p := &Policy{routes: router{hosts: map[string]*upstream{}}, connectTo: map[string]string{}, reachedAt: map[string]*upstream{}}
	if err := cfg.CheckAccess(); err != nil {
		return nil, err
	}
	p.egress = compileEgress(cfg.Egress)
	p.clients = compileClients(cfg)
	switch cfg.UnknownHosts {
	case "allow":
		p.unknownHosts = allowUnknown
	case "deny":
		p.unknownHosts = denyUnknown
	default:
		return nil, fmt.Errorf("unknown_hosts: %q: want allow or deny", cfg.UnknownHosts)
	}
	learned := map[string]*upstream{}
	if prev != nil {
		for _, u := range prev.upstreams {
			learned[u.name] = u
		}
	}
	names := map[string]bool{}
	for i := range cfg.Upstreams {
		cu := &cfg.Upstreams[i]
		path := fmt.Sprintf("upstreams[%d]", i)
		u, err := compileUpstream(cu, path)
		if err != nil {
			return nil, err
		}
		if names[u.name] {
			return nil, fmt.Errorf("%s.name: %q is used twice", path, u.name)
		}
		names[u.name] = true
		if old := learned[u.name]; old != nil {
			u.buckets, u.tuner = old.buckets, old.tuner
		}
		p.upstreams = append(p.upstreams, u)
		if cu.ConnectTo != "" {
			p.reachedAt[hostPortKey(cu.ConnectTo, "")] = u
		}
		for j, h := range cu.Hosts {
			h = config.CanonicalHost(h)
			if h == "" {
				return nil, fmt.Errorf("%s.hosts[%d]: empty host", path, j)
			}
			if other := p.routes.hosts[h]; other != nil {
				return nil, fmt.Errorf("%s.hosts[%d]: host %q is already claimed by %s", path, j, h, other.name)
			}
			p.routes.hosts[h] = u
			if cu.ConnectTo != "" {
				p.connectTo[h] = cu.ConnectTo
			}
		}
	}
	return p, nil
}

// reachedThrough returns the upstream whose connect_to is hostport (on
// defaultPort when it names none): a request sent there directly, by
// address, would reach that upstream uncounted.
func (p *Policy) reachedThrough(hostport, defaultPort string) *upstream {
	if len(p.reachedAt) == 0 {
		return nil
	}
	return p.reachedAt[hostPortKey(hostport, defaultPort)]
}

// hostPortKey is host:port in one spelling: lower case, no final dot,
// IPv6 in brackets, the port defaultPort when it names none.
func hostPortKey(hostport, defaultPort string) string {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		host, port = strings.TrimSuffix(strings.TrimPrefix(hostport, "["), "]"), defaultPort
	}
	if port == "" {
		port = defaultPort
	}
	return net.JoinHostPort(canonicalName(host), port)
}

var upstreamNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]*$`)

// compileUpstream compiles one upstream, refusing what the proxy cannot
// run: unset defaults, unknown modes, limits out of range.
func compileUpstream(u *config.Upstream, path string) (*upstream, error) {
	fail := func(field, format string, args ...any) (*upstream, error) {
		return nil, fmt.Errorf("%s.%s: %s", path, field, fmt.Sprintf(format, args...))
	}
	unset := func(field string) (*upstream, error) {
		return fail(field, "not set (config.Load and config.Parse fill it in)")
	}
	if !upstreamNameRE.MatchString(u.Name) {
		return fail("name", "%q: want a name of lower-case letters, digits, '.', '_' or '-'", u.Name)
	}
	if len(u.Hosts) == 0 {
		return fail("hosts", "upstream %q has no hosts", u.Name)
	}
	if u.WindowMargin < 0 || u.MaxWait < 0 || u.MaxQueue < 0 {
		return fail("window_margin", "window_margin, max_wait and max_queue must not be negative")
	}
	c := &upstream{
		name:         u.Name,
		maxWait:      time.Duration(u.MaxWait),
		maxQueue:     u.MaxQueue,
		windowMargin: time.Duration(u.WindowMargin),
		connectTo:    u.ConnectTo,
		anonKey:      u.Name + "/anonymous",
		buckets:      newBucketMap(4096),
		tuner:        &marginTuner{},
	}
	switch u.Mode {
	case "queue":
	case "reject":
		c.reject = true
	default:
		return fail("mode", "%q: want queue or reject", u.Mode)
	}
	var err error
	if c.limits, err = c.newLimitSet(u.Limits, path+".limits"); err != nil {
		return nil, err
	}
	if u.Anonymous == nil {
		return unset("anonymous")
	}
	if c.anonymous, err = c.newLimitSet(u.Anonymous.Limits, path+".anonymous.limits"); err != nil {
		return nil, err
	}

	th := u.Throttle
	switch {
	case th.Rules == nil:
		return unset("throttle.rules")
	case th.Rewrite == nil:
		return unset("throttle.rewrite")
	case th.Retry.Enabled == nil:
		return unset("throttle.retry.enabled")
	case th.Retry.IdempotencyKey == nil:
		return unset("throttle.retry.idempotency_key")
	case th.MinWait <= 0 || th.MaxWait < th.MinWait || th.DefaultWait < th.MinWait || th.DefaultWait > th.MaxWait:
		return fail("throttle", "want 0 < min_wait <= default_wait <= max_wait (got %v, %v, %v)",
			time.Duration(th.MinWait), time.Duration(th.DefaultWait), time.Duration(th.MaxWait))
	case th.Retry.MaxAttempts < 1 || th.Retry.MaxAttempts > 10:
		return fail("throttle.retry.max_attempts", "%d: want 1 to 10", th.Retry.MaxAttempts)
	case th.Retry.MaxBody < 0:
		return fail("throttle.retry.max_body", "must not be negative")
	}
	c.throttle = throttlePolicy{
		rules:       cloneRules(*th.Rules),
		candidates:  map[int]bool{},
		rewrite:     *th.Rewrite,
		defaultWait: time.Duration(th.DefaultWait),
		bounds:      signals.Bounds{Min: time.Duration(th.MinWait), Max: time.Duration(th.MaxWait)},
		retry:       *th.Retry.Enabled,
		methods:     map[string]bool{},
		idemKey:     *th.Retry.IdempotencyKey,
		anyMethod:   th.Retry.AnyMethod,
		maxAttempts: th.Retry.MaxAttempts,
		maxBody:     th.Retry.MaxBody,
	}
	r := &c.throttle.rules
	for _, set := range [][]int{r.Statuses, r.MarkerStatuses, r.RetryAfterStatuses, r.OverloadStatuses} {
		for _, code := range set {
			c.throttle.candidates[code] = true
		}
	}
	for _, m := range th.Retry.Methods {
		c.throttle.methods[m] = true
	}

	switch u.Learn.Mode {
	case "tighten":
	case "replace":
		c.learn.replace = true
	case "off":
		c.learn.off = true
	default:
		return fail("learn.mode", "%q: want tighten, replace or off", u.Learn.Mode)
	}
	if u.Learn.Threshold == nil {
		return unset("learn.threshold")
	}
	if t := *u.Learn.Threshold; !(t >= 0 && t < 1) {
		return fail("learn.threshold", "%v: want a share from 0 to below 1", t)
	}
	c.learn.threshold = *u.Learn.Threshold
	c.answer = compileAnswer(u.Answer)

	for j, r := range u.Identity {
		rp := fmt.Sprintf("identity[%d]", j)
		cr := rule{label: r.Kind()}
		set := 0
		if r.Header != "" {
			cr.kind, cr.name = byHeader, http.CanonicalHeaderKey(r.Header)
			set++
		}
		if r.Authorization != "" {
			cr.kind, cr.name = byAuthorization, r.Authorization
			set++
		}
		if r.Query != "" {
			cr.kind, cr.name = byQuery, r.Query
			set++
		}
		if r.SourceIP {
			cr.kind = bySourceIP
			set++
		}
		if set != 1 {
			return fail(rp, "set exactly one of header, authorization, query, source_ip")
		}
		if len(r.Limits) > 0 {
			if cr.limits, err = c.newLimitSet(r.Limits, path+"."+rp+".limits"); err != nil {
				return nil, err
			}
		}
		c.rules = append(c.rules, cr)
	}
	for j, o := range u.Overrides {
		op := fmt.Sprintf("%s.overrides[%d]", path, j)
		if (o.Prefix == "") == (o.Fingerprint == "") {
			return nil, fmt.Errorf("%s: set exactly one of prefix and fingerprint", op)
		}
		if len(o.Limits) == 0 {
			return nil, fmt.Errorf("%s: an override needs limits", op)
		}
		set, err := c.newLimitSet(o.Limits, op+".limits")
		if err != nil {
			return nil, err
		}
		if o.Fingerprint != "" {
			c.prints = append(c.prints, override{match: strings.ToLower(o.Fingerprint), limits: set})
		} else {
			c.prefixes = append(c.prefixes, override{match: o.Prefix, limits: set})
		}
	}
	sort.SliceStable(c.prefixes, func(i, j int) bool { return len(c.prefixes[i].match) > len(c.prefixes[j].match) })
	return c, nil
}

// newLimitSet compiles the limits at path: each shown as configured and
// enforced widened by the upstream's margin.
func (u *upstream) newLimitSet(ls []config.Limit, path string) (*limitSet, error) {
	set := &limitSet{up: u}
	var policy []string
	for i, cl := range ls {
		l := quota.Limit(cl)
		if l.Count < 1 || l.Count > quota.MaxLimitCount || l.Window < time.Millisecond {
			return nil, fmt.Errorf("%s[%d]: %d/%v: want a count from 1 to %d and a window of at least 1ms", path, i, l.Count, l.Window, quota.MaxLimitCount)
		}
		set.shown = append(set.shown, l)
		policy = append(policy, fmt.Sprintf("%q;q=%d;w=%d", l.String(), l.Count, ceilSeconds(l.Window)))
	}
	set.policy = strings.Join(policy, ", ")
	return set, nil
}

// cloneRules copies the rules' lists, so that the compiled policy shares
// nothing with the configuration it came from.
func cloneRules(r signals.Rules) signals.Rules {
	c := r
	c.Statuses = append([]int(nil), r.Statuses...)
	c.MarkerStatuses = append([]int(nil), r.MarkerStatuses...)
	c.RetryAfterStatuses = append([]int(nil), r.RetryAfterStatuses...)
	c.OverloadStatuses = append([]int(nil), r.OverloadStatuses...)
	c.BodyMarkers = append([]string(nil), r.BodyMarkers...)
	c.HeaderMarkers = append([]signals.HeaderMarker(nil), r.HeaderMarkers...)
	c.NotQuota = append([]string(nil), r.NotQuota...)
	c.BodyFields = nil
	for _, f := range r.BodyFields {
		f.Values = append([]string(nil), f.Values...)
		c.BodyFields = append(c.BodyFields, f)
	}
	return c
}

// keyedBy makes every upstream of p key credentials by HMAC-SHA256 under
// secret (nil: SHA-256). Called before p is published.
func (p *Policy) keyedBy(secret []byte) *Policy {
	for _, u := range p.upstreams {
		u.keySecret = secret
	}
	return p
}
