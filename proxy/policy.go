package proxy

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
	"github.com/ratelimit-proxy/ratelimit-proxy/signals"
)

// upstream is the compiled policy of one configured upstream.
type upstream struct {
	name      string
	rules     []rule
	limits    *limitSet // keys found by a rule without limits of its own
	anonymous *limitSet
	anonKey   string     // the store key of requests without a credential
	prefixes  []override // longest prefix first
	prints    []override // fingerprint overrides
	reject    bool
	maxWait   time.Duration
	maxQueue  int
	connectTo string // host:port dialled instead of the request's host; "" for none

	// windowMargin widens every window; 0 means 1% of the window, at
	// least 10ms and at most 1s; a quarter of the window at most.
	windowMargin time.Duration

	throttle throttlePolicy
	learn    learnPolicy
	answer   answerPolicy
	buckets  *bucketMap   // shared with the same upstream after a reload
	tuner    *marginTuner // likewise
	// keySecret, when set, keys credentials by HMAC-SHA256 under it
	// instead of SHA-256 (a store shared with other replicas).
	keySecret []byte
}

// margin is the widening applied to a window of this upstream, as
// config.Upstream.Margin computes it: never more than a quarter of the
// window (config refuses a window_margin above that for the configured
// windows; a window the upstream reports is held to it here).
func (u *upstream) margin(window time.Duration) time.Duration {
	if u.windowMargin > 0 {
		return min(u.windowMargin, window/4)
	}
	return min(max(window/100, 10*time.Millisecond), time.Second, window/4)
}

// throttlePolicy is the compiled throttle section of an upstream.
type throttlePolicy struct {
	rules       signals.Rules
	candidates  map[int]bool // statuses whose body must be read to classify
	rewrite     bool
	defaultWait time.Duration
	bounds      signals.Bounds
	retry       bool
	methods     map[string]bool
	idemKey     bool
	anyMethod   bool
	maxAttempts int
	maxBody     int
}

type learnPolicy struct {
	off, replace bool
	threshold    float64
}

type ruleKind int

const (
	byHeader ruleKind = iota
	byAuthorization
	byQuery
	bySourceIP
)

type rule struct {
	kind   ruleKind
	name   string // header name, scheme or query parameter
	label  string // for logs: "header:x-api-key"
	limits *limitSet
}

type override struct {
	match  string // prefix, or fingerprint in lower-case hex
	limits *limitSet
}

// limitSet holds the limits of a key as configured (shown to clients) and
// as enforced (each window widened by the upstream's margin), plus the
// RateLimit-Policy header value, computed once.
type limitSet struct {
	shown  []quota.Limit
	policy string
	up     *upstream                      // whose margins widen the windows
	cache  atomic.Pointer[enforcedLimits] // see enforced
}

// shownFor maps an enforced limit back to the configured one: the same
// count, a window widened by at most a quarter.
func (s *limitSet) shownFor(enforced quota.Limit) (quota.Limit, bool) {
	for _, l := range s.shown {
		if l.Count == enforced.Count && enforced.Window >= l.Window && enforced.Window <= l.Window+l.Window/4 {
			return l, true
		}
	}
	if len(s.shown) > 0 {
		return s.shown[0], false
	}
	return quota.Limit{}, false
}

// identity is who a request is counted as.
type identity struct {
	key         string // the quota key: upstream, class and full SHA-256 (or HMAC-SHA256 under the key secret)
	fingerprint string // first 12 hex digits, or "anonymous"
	rule        string // the rule that matched, or "anonymous"
	limits      *limitSet
}

// identify finds the request's credential by the upstream's rules, first
// match wins, and the limits that apply to it. The credential itself never
// leaves this function: only its SHA-256 does (the fingerprint, and the
// key), or, with a key secret, the key is its full HMAC-SHA256 under the
// secret, so that a shared store holds nothing that could be read back to
// a credential by guessing (a source IP address) and no two credentials
// share a quota by a fingerprint collision. A rule that cannot tell
// which credential the upstream will read refuses the request with a
// *credentialError (see credential.go).
func (u *upstream) identify(r *http.Request) (identity, error) {
	for i := range u.rules {
		rl := &u.rules[i]
		cred, why := rl.find(r)
		if why != "" {
			return identity{}, &credentialError{rule: rl.label, why: why}
		}
		if cred == "" {
			continue
		}
		sum := sha256.Sum256([]byte(cred))
		var hexSum [2 * sha256.Size]byte
		hex.Encode(hexSum[:], sum[:])
		kind := "/cred/"
		if rl.kind == bySourceIP {
			kind = "/ip/"
		}
		var key, print string
		if u.keySecret == nil {
			key = u.name + kind + string(hexSum[:]) // one allocation
			print = key[len(key)-len(hexSum):]
		} else {
			mac := hmac.New(sha256.New, u.keySecret)
			mac.Write([]byte(cred))
			var keySum [sha256.Size]byte
			var hexKey [2 * sha256.Size]byte
			hex.Encode(hexKey[:], mac.Sum(keySum[:0]))
			key = u.name + kind + string(hexKey[:])
			print = string(hexSum[:])
		}
		id := identity{key: key, fingerprint: print[:12], rule: rl.label, limits: rl.limits}
		if rl.kind != bySourceIP {
			// Credentials share a bucket however they are sent: a token in
			// ?access_token= and in "Authorization: Bearer" is one quota.
			if o := u.override(cred, print); o != nil {
				id.limits = o
			}
		}
		if id.limits == nil {
			id.limits = u.limits
		}
		return id, nil
	}
	return identity{key: u.anonKey, fingerprint: "anonymous", rule: "anonymous", limits: u.anonymous}, nil
}

func (u *upstream) override(cred, print string) *limitSet {
	for _, o := range u.prints {
		if strings.HasPrefix(print, o.match) {
			return o.limits
		}
	}
	for _, o := range u.prefixes {
		if strings.HasPrefix(cred, o.match) {
			return o.limits
		}
	}
	return nil
}

// find returns the credential rl finds in r ("" for none), or why it
// cannot tell which one the upstream will read.
func (rl *rule) find(r *http.Request) (cred, why string) {
	switch rl.kind {
	case byHeader, byAuthorization:
		var ok bool
		if rl.kind == byHeader {
			cred, ok = headerCredential(r.Header[rl.name])
		} else {
			cred, ok = authorizationCredential(r.Header["Authorization"], rl.name)
		}
		if !ok {
			return "", whyTwoValues
		}
		return cred, ""
	case byQuery:
		if r.URL.RawQuery != "" {
			return queryCredential(r.URL.RawQuery, rl.name)
		}
	case bySourceIP:
		if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
			return host, ""
		}
		return r.RemoteAddr, ""
	}
	return "", ""
}

// router maps a request's host to its upstream.
type router struct {
	hosts map[string]*upstream // "host" or "host:port", lower-case
}

// route finds the upstream of hostport, in any case and with or without
// a final dot on the host. An upstream that lists host:port
// claims that port only; one that lists a bare host claims the scheme's
// default port only: defaultPort is "443" for https and CONNECT, "80" for
// http. A hostport without a port (or with an empty one) is on the
// default port.
func (rt *router) route(hostport, defaultPort string) *upstream {
	if len(rt.hosts) == 0 {
		return nil
	}
	h := strings.ToLower(hostport)
	host, port, err := net.SplitHostPort(h)
	if err != nil {
		host, port = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]"), defaultPort
	}
	if port == "" {
		port = defaultPort
	}
	host = strings.TrimSuffix(host, ".") // "api.test." is api.test
	if u := rt.hosts[net.JoinHostPort(host, port)]; u != nil {
		return u
	}
	if port == defaultPort {
		return rt.hosts[host]
	}
	return nil
}

// defaultPort is the port a URL of scheme names when it names none.
func defaultPort(scheme string) string {
	if scheme == "http" {
		return "80"
	}
	return "443"
}

// ceilSeconds rounds d up to whole seconds, at least 1.
func ceilSeconds(d time.Duration) int64 {
	s := int64((d + time.Second - 1) / time.Second)
	return max(s, 1)
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// bucketMap remembers which upstream bucket (GitHub resource, Discord
// bucket) a route fell into, so that what the upstream taught about the
// bucket applies to the route's next requests. It holds at most max routes;
// when full it starts over.
type bucketMap struct {
	mu     sync.RWMutex
	routes map[string]string
	max    int
	any    atomic.Bool // a bucket was ever named: until then, skip lookups
}

func (b *bucketMap) used() bool { return b.any.Load() }

func newBucketMap(max int) *bucketMap {
	return &bucketMap{routes: map[string]string{}, max: max}
}

func (b *bucketMap) get(route string) string {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.routes[route]
}

func (b *bucketMap) set(route, bucket string) {
	b.any.Store(true)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.routes[route] == bucket {
		return
	}
	if len(b.routes) >= b.max {
		clear(b.routes)
	}
	b.routes[route] = bucket
}
