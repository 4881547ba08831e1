// Package config reads and checks the ratelimit-proxy YAML configuration.
//
// Load refuses a file with an unknown field, a value of the wrong kind, a bad
// duration or limit, or a host claimed by two upstreams, with an error of the
// form "FILE:LINE: FIELD.PATH: what is wrong". A Config returned by Load is
// complete: every default is filled and every relative path resolved against
// the directory of the file.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
	"github.com/ratelimit-proxy/ratelimit-proxy/signals"
	"go.yaml.in/yaml/v3"
)

// Config is the whole file. See config.example.yaml for every field.
type Config struct {
	// Listen is the proxy's address. Default 127.0.0.1:8080 (loopback).
	Listen string `yaml:"listen"`
	// Admin is the address of the admin endpoints (the status page,
	// /healthz, /readyz, /metrics, /v1/quotas, /ca.pem). Empty: no admin
	// listener.
	Admin string `yaml:"admin"`
	// DataDir holds the generated CA. Default "data" beside the config file.
	DataDir string `yaml:"data_dir"`
	// CACert and CAKey are the interception CA's PEM files. Default
	// DATA_DIR/ca.pem and DATA_DIR/ca-key.pem, generated on first start.
	CACert string `yaml:"ca_cert"`
	CAKey  string `yaml:"ca_key"`
	// UpstreamRoots are PEM files of CAs trusted for upstream TLS in
	// addition to the system roots.
	UpstreamRoots []string `yaml:"upstream_roots"`
	// UnknownHosts says what to do with a host no upstream claims: "allow"
	// (tunnel CONNECT untouched, forward plain HTTP without limits; the
	// default) or "deny" (answer 403).
	UnknownHosts string `yaml:"unknown_hosts"`
	// Clients are the networks allowed to use the proxy and its admin
	// endpoints; any other client is answered 403. Empty: any client that
	// can connect. A listen or admin address beyond loopback needs Clients
	// or ClientTokens.
	Clients []Prefix `yaml:"clients"`
	// ClientTokens are the SHA-256 of the tokens clients present in
	// Proxy-Authorization (Bearer TOKEN, or Basic with TOKEN as the
	// password) and, on the admin endpoints, in Authorization. Set, every
	// client must present one of them (407 otherwise), as well as come from
	// Clients when those are set.
	ClientTokens []TokenHash `yaml:"client_tokens"`
	// Egress says which destinations besides public addresses the proxy
	// may reach for hosts no upstream claims.
	Egress Egress `yaml:"egress"`
	// Log sets the log level and format.
	Log Log `yaml:"log"`
	// Timeouts of client and upstream connections.
	Timeouts Timeouts `yaml:"timeouts"`
	// Requests bounds what one client request may carry.
	Requests Requests `yaml:"requests"`
	// Resources bound what all clients together may hold in the proxy.
	Resources Resources `yaml:"resources"`
	// MaxIdleConnsPerHost sizes the pool of idle upstream connections per
	// host. Default 512.
	MaxIdleConnsPerHost int `yaml:"max_idle_conns_per_host"`
	// Upstreams are the APIs whose quotas the proxy enforces.
	Upstreams []Upstream `yaml:"upstreams"`
	// Store is where the quota state lives: this process (the default) or
	// a Redis shared by every replica.
	Store Store `yaml:"store"`
}

// Store configures the quota store.
type Store struct {
	// Backend is "memory" (the default: each process counts alone) or
	// "redis" (every replica sharing the Redis shares each key's quota).
	Backend string `yaml:"backend"`
	// URL is the Redis: redis://[user:password@]host:port[/db], or
	// rediss:// for TLS. Required for redis unless Cluster is set.
	URL string `yaml:"url"`
	// Cluster lists host:port of Redis Cluster nodes (some are enough);
	// with URL too, the URL's credentials and TLS apply to them.
	Cluster []string `yaml:"cluster"`
	// Prefix starts every Redis key name. Default "rlp".
	Prefix string `yaml:"prefix"`
	// Timeout bounds every call to Redis. Default 50ms.
	Timeout Duration `yaml:"timeout"`
	// OnStoreError says what happens while Redis fails: "local" (the
	// default: each replica counts alone with every limit divided by
	// Replicas), "reject" (429 with Retry-After) or "allow" (requests
	// pass uncounted).
	OnStoreError string `yaml:"on_store_error"`
	// Replicas is how many proxy replicas share the Redis: the local
	// fallback gives each 1/Replicas of every limit. Default 1.
	Replicas int `yaml:"replicas"`
	// KeySecretFile holds the per-deployment secret the store keys are
	// made with (HMAC-SHA256 of the credential), so that no credential,
	// nor a value as guessable as an IP address, can be read back from
	// Redis. Required for redis; every replica must use the same secret.
	// At least 16 bytes; `head -c 32 /dev/urandom | base64` makes one.
	KeySecretFile string `yaml:"key_secret_file"`
}

// Log configures logging.
type Log struct {
	// Level is debug, info (default), warn or error.
	Level string `yaml:"level"`
	// Format is json (default) or console.
	Format string `yaml:"format"`
	// MaxPathBytes cuts longer paths (and CONNECT hosts) in log lines.
	// Default 2048, from 64 to 65536.
	MaxPathBytes int `yaml:"max_path_bytes"`
}

// Requests bounds the request line and header fields of one client
// request, on direct and intercepted connections alike. The defaults are
// Envoy's (max_request_headers_kb 60, max_headers_count 100, rounded to
// 64 KiB). A request beyond either bound is answered 431 and its
// connection closed.
type Requests struct {
	// MaxHeaderBytes bounds the request line and header fields, each
	// counted as "Name: value" plus CRLF. Default 65536, from 1024 to
	// 1048576.
	MaxHeaderBytes int `yaml:"max_header_bytes"`
	// MaxHeaderFields bounds the header fields, Host included. Default
	// 100, from 1 to 10000.
	MaxHeaderFields int `yaml:"max_header_fields"`
}

// Resources bound what all clients together may hold in the proxy: a
// client chooses its keys, opens connections and sends bodies, so each
// per-request bound needs a total. When one is reached the proxy refuses
// the excess, never what it already holds, and logs "resource limit
// reached" naming the resource, at most once every 10 seconds with the
// count of refusals since the last line.
type Resources struct {
	// MaxClientConns bounds the client connections, tunnels included. At
	// the bound the connection idle the longest (between requests, or
	// before its first) is closed to make room; with none idle, the new
	// one is closed at once. Default 4096, from 16 to 1048576; at start it
	// is lowered to half the process's open-file limit when that is lower.
	MaxClientConns int `yaml:"max_client_conns"`
	// MaxTunnels bounds CONNECT tunnels, intercepted and untouched, and
	// upgraded (WebSocket) connections; beyond it a CONNECT is answered
	// 503. Default 1024, from 1 to 1048576.
	MaxTunnels int `yaml:"max_tunnels"`
	// MaxQueued bounds the requests waiting for their slot, every key
	// together (max_queue bounds one key); beyond it a request that cannot
	// leave at once is refused with 429 and a Retry-After that is kept.
	// Default 4096, from 1 to 1000000.
	MaxQueued int `yaml:"max_queued"`
	// MaxBufferedBytes bounds the request bodies held in memory, every
	// request together: bodies up to throttle.retry.max_body are read in
	// full before admission (so that a slow client never holds a slot) and
	// kept for retries. A body that does not fit is streamed instead and
	// not retried. Default 67108864 (64 MiB), from 65536 to 68719476736.
	MaxBufferedBytes int64 `yaml:"max_buffered_bytes"`
	// MaxKeys bounds the keys the memory store holds. At the bound the
	// keys that hold nothing (no send in any window, no hold, nothing
	// learned in force) are forgotten; a key that still holds sends is
	// never forgotten (that would break "never over"), so with none empty
	// a request of a new key is answered 503 with Retry-After. Default
	// 100000, from 16 to 100000000.
	MaxKeys int `yaml:"max_keys"`
	// MaxLeafCerts bounds the cached certificates of intercepted hosts
	// (least recently used go first). Default 1024, from 16 to 1048576.
	MaxLeafCerts int `yaml:"max_leaf_certs"`
}

// Timeouts bound every stage of a connection.
type Timeouts struct {
	Dial           Duration `yaml:"dial"`            // default 10s
	TLSHandshake   Duration `yaml:"tls_handshake"`   // default 10s
	ResponseHeader Duration `yaml:"response_header"` // default 60s
	IdleConn       Duration `yaml:"idle_conn"`       // default 90s
	ClientIdle     Duration `yaml:"client_idle"`     // default 2m
	ClientHeader   Duration `yaml:"client_header"`   // default 30s
	TunnelIdle     Duration `yaml:"tunnel_idle"`     // default 5m; upgraded (WebSocket) connections too
	Shutdown       Duration `yaml:"shutdown"`        // default 15s
	// ClientBody bounds how long a request body may take to arrive, from
	// when the proxy starts reading it (a body read before admission) or
	// from the request's release (a body streamed upstream, which counts
	// against its key's windows until it is sent). Beyond it the request
	// is answered 408 and its connection closed. Default 60s.
	ClientBody Duration `yaml:"client_body"`
	// UpstreamBodyIdle bounds the wait for the next bytes of a response
	// body; beyond it the client's connection is cut and the request
	// logged as an error. Default 5m.
	UpstreamBodyIdle Duration `yaml:"upstream_body_idle"`
}

// Upstream is one API: the hosts it answers on, how its requests are keyed,
// and the limits of each key.
type Upstream struct {
	// Name identifies the upstream in logs and keys.
	Name string `yaml:"name"`
	// Hosts are the host names (optionally host:port) of the API.
	Hosts []string `yaml:"hosts"`
	// ConnectTo, when set, is the host:port dialled instead of resolving
	// the request's host (TLS still verifies the request's host name).
	ConnectTo string `yaml:"connect_to"`
	// Identity lists how a request is keyed; the first rule that finds a
	// credential wins.
	Identity []IdentityRule `yaml:"identity"`
	// Limits apply to each key found by an identity rule that has no
	// limits of its own.
	Limits []Limit `yaml:"limits"`
	// Anonymous sets the limits of the one bucket shared by the requests
	// that match no identity rule. Default: Limits.
	Anonymous *Anonymous `yaml:"anonymous"`
	// Overrides replace the limits of particular credentials.
	Overrides []Override `yaml:"overrides"`
	// Mode is "queue" (hold a request until it may pass; the default) or
	// "reject" (answer 429 at once).
	Mode string `yaml:"mode"`
	// MaxWait bounds how long a request is held in queue mode. Default 30s.
	MaxWait Duration `yaml:"max_wait"`
	// MaxQueue bounds how many requests of one key are held at once in
	// queue mode. Default 1000.
	MaxQueue int `yaml:"max_queue"`
	// WindowMargin widens every window by this much, to absorb network
	// jitter between the proxy and the vendor's clock. Default: 1% of the
	// window, at least 10ms and at most 1s. At most a quarter of the
	// shortest configured window; a reported window gets at most a
	// quarter of itself.
	WindowMargin Duration `yaml:"window_margin"`
	// Profile names a built-in vendor profile whose fields this upstream
	// starts from; every field set here overrides the profile's.
	Profile string `yaml:"profile"`
	// Throttle says how the upstream signals "slow down" and what the proxy
	// does about it.
	Throttle Throttle `yaml:"throttle"`
	// Learn says what the proxy takes from the quota headers the upstream
	// sends.
	Learn Learn `yaml:"learn"`
	// Answer adds what the vendor's own SDKs look for to every 429 the
	// proxy gives for this upstream (see Answer).
	Answer Answer `yaml:"answer"`
}

// Throttle configures how upstream throttles are recognised and handled.
type Throttle struct {
	// Rules recognise a throttle. Default: signals.DefaultRules() without
	// its body_fields (the clarifai and shopify profiles name theirs).
	Rules *signals.Rules `yaml:"rules"`
	// Rewrite turns a recognised throttle into HTTP 429 with Retry-After
	// for the client. Default true.
	Rewrite *bool `yaml:"rewrite"`
	// DefaultWait is the cooldown when the throttle says nothing about
	// time. Default 5s.
	DefaultWait Duration `yaml:"default_wait"`
	// MinWait and MaxWait bound every wait the upstream names. Defaults 1s
	// and 1h.
	MinWait Duration `yaml:"min_wait"`
	MaxWait Duration `yaml:"max_wait"`
	// Retry configures transparent retries of throttled requests.
	Retry Retry `yaml:"retry"`
}

// Retry configures transparent retries: when the upstream throttles and the
// wait fits in the request's max_wait, the proxy waits and sends it again.
type Retry struct {
	// Enabled, default true.
	Enabled *bool `yaml:"enabled"`
	// Methods that are retried. Default GET, HEAD, OPTIONS.
	Methods []string `yaml:"methods"`
	// IdempotencyKey also retries requests that carry an Idempotency-Key
	// header. Default true.
	IdempotencyKey *bool `yaml:"idempotency_key"`
	// AnyMethod retries every method, replaying bodies of non-idempotent
	// requests. Default false.
	AnyMethod bool `yaml:"any_method"`
	// MaxAttempts counts every attempt, the first included. Default 3.
	MaxAttempts int `yaml:"max_attempts"`
	// MaxBody is the largest request body kept for a replay, in bytes.
	// Default 1048576.
	MaxBody int `yaml:"max_body"`
}

// Learn configures the informed governor.
type Learn struct {
	// Mode is "tighten" (default: windows the upstream reports apply on top
	// of the configured limits), "replace" (they replace the configured
	// limits while known) or "off" (quota headers are ignored).
	Mode string `yaml:"mode"`
	// Threshold is the share of the upstream's limit kept unused while
	// another caller is evident (the upstream counted more than the proxy
	// sent in its window): when what is left falls to it, the key is held
	// until the reset. A key the proxy has to itself uses all of its
	// quota. Default 0.05.
	Threshold *float64 `yaml:"threshold"`
}

// IdentityRule finds a credential in a request. Exactly one of Header,
// Authorization, Query and SourceIP is set.
type IdentityRule struct {
	// Header names a request header holding the credential (apikey).
	Header string `yaml:"header"`
	// Authorization names a scheme of the Authorization header (Bearer,
	// Key); the credential is what follows it.
	Authorization string `yaml:"authorization"`
	// Query names a URL query parameter holding the credential.
	Query string `yaml:"query"`
	// SourceIP keys the request on the client's IP address.
	SourceIP bool `yaml:"source_ip"`
	// Limits, when set, replace the upstream's Limits for keys this rule
	// finds.
	Limits []Limit `yaml:"limits"`
}

// Kind names the rule for logs: "header:apikey", "authorization:bearer",
// "query:access_token" or "source_ip".
func (r IdentityRule) Kind() string {
	switch {
	case r.Header != "":
		return "header:" + strings.ToLower(r.Header)
	case r.Authorization != "":
		return "authorization:" + strings.ToLower(r.Authorization)
	case r.Query != "":
		return "query:" + r.Query
	default:
		return "source_ip"
	}
}

// Anonymous configures the bucket of requests without a credential.
type Anonymous struct {
	Limits []Limit `yaml:"limits"`
}

// Override replaces the limits of credentials that start with Prefix, or
// whose SHA-256 fingerprint (lower-case hex, at least its first 12 digits)
// is Fingerprint. Individual fingerprints win over prefixes; the longest
// prefix wins among prefixes.
type Override struct {
	Prefix      string  `yaml:"prefix"`
	Fingerprint string  `yaml:"fingerprint"`
	Limits      []Limit `yaml:"limits"`
}

// Duration is a time.Duration written as a Go duration string ("30s").
type Duration time.Duration

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return &nodeError{n, "want a duration such as 30s"}
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil || v < 0 {
		return &nodeError{n, fmt.Sprintf("duration %q: want a non-negative duration such as 500ms, 30s or 5m", n.Value)}
	}
	*d = Duration(v)
	return nil
}

// Limit is a quota.Limit written as "COUNT/WINDOW" ("300/1m").
type Limit quota.Limit

// UnmarshalYAML implements yaml.Unmarshaler.
func (l *Limit) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return &nodeError{n, "want a limit such as 300/1m"}
	}
	v, err := quota.ParseLimit(n.Value)
	if err != nil {
		return &nodeError{n, err.Error()}
	}
	*l = Limit(v)
	return nil
}

// Limits converts a list of config limits to the engine's type.
func Limits(ls []Limit) []quota.Limit {
	out := make([]quota.Limit, len(ls))
	for i, l := range ls {
		out[i] = quota.Limit(l)
	}
	return out
}

// nodeError is an error about one node of the document; Load turns it into
// "FILE:LINE: PATH: message".
type nodeError struct {
	node *yaml.Node
	msg  string
}

func (e *nodeError) Error() string { return fmt.Sprintf("line %d: %s", e.node.Line, e.msg) }

// Load reads, checks and completes the configuration at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	cfg, err := Parse(path, data)
	if err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("resolving the directory of %s: %w", path, err)
	}
	cfg.resolvePaths(dir)
	return cfg, nil
}

// Parse checks and completes a configuration held in data; name is used in
// error messages. Relative paths are left as they are.
func Parse(name string, data []byte) (*Config, error) {
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s: the file is empty", name)
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if len(doc.Content) == 0 {
		return nil, fmt.Errorf("%s: the file is empty", name)
	}
	d := &document{name: name, paths: map[*yaml.Node]string{}}
	root := doc.Content[0]
	if err := d.check(root, configType, ""); err != nil {
		return nil, err
	}
	var cfg Config
	if err := root.Decode(&cfg); err != nil {
		var ne *nodeError
		if errors.As(err, &ne) {
			return nil, d.errorf(ne.node, "%s: %s", display(d.paths[ne.node]), ne.msg)
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if err := applyProfiles(&cfg, d, root); err != nil {
		return nil, err
	}
	if err := cfg.validate(d, root); err != nil {
		return nil, err
	}
	cfg.fillDefaults()
	for i, u := range cfg.Upstreams {
		th := u.Throttle
		p := fmt.Sprintf("upstreams[%d].throttle", i)
		at := func(f string) *yaml.Node { return d.node(root, p+"."+f) }
		if th.MinWait > th.MaxWait {
			return nil, d.errorf(at("min_wait"), "%s.min_wait: %v is above max_wait %v", p, time.Duration(th.MinWait), time.Duration(th.MaxWait))
		}
		if th.DefaultWait < th.MinWait || th.DefaultWait > th.MaxWait {
			return nil, d.errorf(at("default_wait"), "%s.default_wait: %v is outside min_wait %v .. max_wait %v", p, time.Duration(th.DefaultWait), time.Duration(th.MinWait), time.Duration(th.MaxWait))
		}
	}
	return &cfg, nil
}

func (c *Config) fillDefaults() {
	c.Listen = or(c.Listen, "127.0.0.1:8080")
	c.DataDir = or(c.DataDir, "data")
	c.CACert = or(c.CACert, filepath.Join(c.DataDir, "ca.pem"))
	c.CAKey = or(c.CAKey, filepath.Join(c.DataDir, "ca-key.pem"))
	c.UnknownHosts = or(c.UnknownHosts, "allow")
	c.Log.Level = or(c.Log.Level, "info")
	c.Log.Format = or(c.Log.Format, "json")
	if c.MaxIdleConnsPerHost == 0 {
		c.MaxIdleConnsPerHost = 512
	}
	st := &c.Store
	st.Backend = or(st.Backend, "memory")
	st.Prefix = or(st.Prefix, "rlp")
	st.Timeout = orDuration(st.Timeout, 50*time.Millisecond)
	st.OnStoreError = or(st.OnStoreError, "local")
	if st.Replicas == 0 {
		st.Replicas = 1
	}
	if c.Log.MaxPathBytes == 0 {
		c.Log.MaxPathBytes = 2048
	}
	if c.Requests.MaxHeaderBytes == 0 {
		c.Requests.MaxHeaderBytes = 64 << 10
	}
	if c.Requests.MaxHeaderFields == 0 {
		c.Requests.MaxHeaderFields = 100
	}
	c.Resources.fillDefaults()
	t := &c.Timeouts
	for _, f := range []struct {
		d   *Duration
		def time.Duration
	}{
		{&t.Dial, 10 * time.Second}, {&t.TLSHandshake, 10 * time.Second},
		{&t.ResponseHeader, 60 * time.Second}, {&t.IdleConn, 90 * time.Second},
		{&t.ClientIdle, 2 * time.Minute}, {&t.ClientHeader, 30 * time.Second},
		{&t.TunnelIdle, 5 * time.Minute}, {&t.Shutdown, 15 * time.Second},
		{&t.ClientBody, 60 * time.Second}, {&t.UpstreamBodyIdle, 5 * time.Minute},
	} {
		if *f.d == 0 {
			*f.d = Duration(f.def)
		}
	}
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		u.Mode = or(u.Mode, "queue")
		if u.MaxWait == 0 {
			u.MaxWait = Duration(30 * time.Second)
		}
		if u.MaxQueue == 0 {
			u.MaxQueue = 1000
		}
		if u.Anonymous == nil || u.Anonymous.Limits == nil {
			// "anonymous: {limits: []}" asks for no limit; absent or
			// empty means the upstream's limits.
			u.Anonymous = &Anonymous{Limits: u.Limits}
		}
		th := &u.Throttle
		if th.Rules == nil {
			// The library defaults, less the body fields of particular
			// vendors (Clarifai, Shopify GraphQL): those make every success
			// body worth reading, so only their profiles name them.
			r := signals.DefaultRules()
			r.BodyFields = nil
			th.Rules = &r
		}
		th.Rewrite = orTrue(th.Rewrite)
		th.DefaultWait = orDuration(th.DefaultWait, 5*time.Second)
		th.MinWait = orDuration(th.MinWait, time.Second)
		th.MaxWait = orDuration(th.MaxWait, time.Hour)
		th.Retry.Enabled = orTrue(th.Retry.Enabled)
		th.Retry.IdempotencyKey = orTrue(th.Retry.IdempotencyKey)
		if th.Retry.Methods == nil {
			th.Retry.Methods = []string{"GET", "HEAD", "OPTIONS"}
		}
		if th.Retry.MaxAttempts == 0 {
			th.Retry.MaxAttempts = 3
		}
		if th.Retry.MaxBody == 0 {
			th.Retry.MaxBody = 1 << 20
		}
		u.Learn.Mode = or(u.Learn.Mode, "tighten")
		if u.Learn.Threshold == nil {
			v := 0.05
			u.Learn.Threshold = &v
		}
		for j := range u.Hosts {
			u.Hosts[j] = CanonicalHost(u.Hosts[j])
		}
		for j := range u.Overrides {
			u.Overrides[j].Fingerprint = strings.ToLower(u.Overrides[j].Fingerprint)
		}
	}
}

func (c *Config) resolvePaths(dir string) {
	abs := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	c.DataDir = abs(c.DataDir)
	c.Store.KeySecretFile = abs(c.Store.KeySecretFile)
	c.CACert = abs(c.CACert)
	c.CAKey = abs(c.CAKey)
	for i, p := range c.UpstreamRoots {
		c.UpstreamRoots[i] = abs(p)
	}
}

// SetDataDir moves the data directory, and the CA files with it unless
// they were named explicitly.
func (c *Config) SetDataDir(dir string) {
	if c.CACert == filepath.Join(c.DataDir, "ca.pem") && c.CAKey == filepath.Join(c.DataDir, "ca-key.pem") {
		c.CACert, c.CAKey = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
	}
	c.DataDir = dir
}

// Margin is the widening applied to a window of this upstream: the
// configured window_margin, or by default 1% of the window, at least 10ms
// and at most 1s; never more than a quarter of the window (Load refuses a
// window_margin above that for the configured windows; windows the
// upstream reports are held to it here).
func (u *Upstream) Margin(window time.Duration) time.Duration {
	if u.WindowMargin > 0 {
		return min(time.Duration(u.WindowMargin), window/4)
	}
	return min(max(window/100, 10*time.Millisecond), time.Second, window/4)
}

func orTrue(b *bool) *bool {
	if b == nil {
		t := true
		return &t
	}
	return b
}

func orDuration(d Duration, def time.Duration) Duration {
	if d == 0 {
		return Duration(def)
	}
	return d
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

var (
	nameRE        = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]*$`)
	tokenRE       = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
	fingerprintRE = regexp.MustCompile(`^[0-9a-fA-F]{12,64}$`)
	// hostNameRE: dot-separated labels of letters, digits, '-' and '_'
	// (1 to 63 each, no '-' at either end), an optional final dot.
	hostNameRE = regexp.MustCompile(`^([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?$`)
)

func (c *Config) validate(d *document, root *yaml.Node) error {
	fail := func(path, format string, args ...any) error {
		return d.errorf(d.node(root, path), "%s: %s", path, fmt.Sprintf(format, args...))
	}
	if err := checkAddr(c.Listen, true); err != nil {
		return fail("listen", "%v", err)
	}
	if err := checkAddr(c.Admin, true); err != nil {
		return fail("admin", "%v", err)
	}
	if c.Listen != "" && c.Listen == c.Admin {
		return fail("admin", "admin and listen must differ")
	}
	switch c.UnknownHosts {
	case "", "allow", "deny":
	default:
		return fail("unknown_hosts", "%q: want allow or deny", c.UnknownHosts)
	}
	switch c.Log.Level {
	case "", "debug", "info", "warn", "error":
	default:
		return fail("log.level", "%q: want debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "", "json", "console":
	default:
		return fail("log.format", "%q: want json or console", c.Log.Format)
	}
	if err := c.Store.validate(fail); err != nil {
		return err
	}
	b := bounds{d: d, root: root}
	b.count("max_idle_conns_per_host", c.MaxIdleConnsPerHost, 1, 65536, "512")
	b.count("requests.max_header_bytes", c.Requests.MaxHeaderBytes, 1024, 1<<20, "65536")
	b.count("requests.max_header_fields", c.Requests.MaxHeaderFields, 1, 10000, "100")
	b.count("log.max_path_bytes", c.Log.MaxPathBytes, 64, 65536, "2048")
	c.Resources.check(&b)
	t := &c.Timeouts
	for _, f := range []struct {
		name string
		v    Duration
		hi   time.Duration
		dflt string
	}{
		{"dial", t.Dial, 5 * time.Minute, "10s"},
		{"tls_handshake", t.TLSHandshake, 5 * time.Minute, "10s"},
		{"response_header", t.ResponseHeader, time.Hour, "60s"},
		{"idle_conn", t.IdleConn, time.Hour, "90s"},
		{"client_idle", t.ClientIdle, time.Hour, "2m"},
		{"client_header", t.ClientHeader, 5 * time.Minute, "30s"},
		{"tunnel_idle", t.TunnelIdle, 24 * time.Hour, "5m"},
		{"shutdown", t.Shutdown, time.Hour, "15s"},
		{"client_body", t.ClientBody, time.Hour, "60s"},
		{"upstream_body_idle", t.UpstreamBodyIdle, 24 * time.Hour, "5m"},
	} {
		b.duration("timeouts."+f.name, f.v, time.Millisecond, f.hi,
			"there is no \"no timeout\"; leave it out for the default "+f.dflt)
	}
	if b.err != nil {
		return b.err
	}
	if err := c.checkAccess(fail); err != nil {
		return err
	}
	if (c.CACert == "") != (c.CAKey == "") {
		return fail("ca_cert", "ca_cert and ca_key go together: set both or neither")
	}
	names := map[string]string{}
	hosts := map[string]string{}
	for i, u := range c.Upstreams {
		p := fmt.Sprintf("upstreams[%d]", i)
		if !nameRE.MatchString(u.Name) {
			return fail(p+".name", "%q: want a name of lower-case letters, digits, '.', '_' or '-'", u.Name)
		}
		if prev, dup := names[u.Name]; dup {
			return fail(p+".name", "name %q is already used by %s", u.Name, prev)
		}
		names[u.Name] = p
		if len(u.Hosts) == 0 {
			return fail(p, "upstream %q has no hosts", u.Name)
		}
		for j, h := range u.Hosts {
			hp := fmt.Sprintf("%s.hosts[%d]", p, j)
			if err := checkHost(h); err != nil {
				return fail(hp, "%v", err)
			}
			key := CanonicalHost(h)
			if prev, dup := hosts[key]; dup {
				return fail(hp, "host %q is already claimed by %s", h, prev)
			}
			hosts[key] = fmt.Sprintf("%s (%s)", hp, u.Name)
		}
		if u.ConnectTo != "" {
			if err := checkHostPort(u.ConnectTo); err != nil {
				return fail(p+".connect_to", "%v", err)
			}
		}
		for j, r := range u.Identity {
			rp := fmt.Sprintf("%s.identity[%d]", p, j)
			set := 0
			for _, s := range []string{r.Header, r.Authorization, r.Query} {
				if s != "" {
					set++
				}
			}
			if r.SourceIP {
				set++
			}
			if set != 1 {
				return fail(rp, "set exactly one of header, authorization, query, source_ip")
			}
			for _, f := range []struct{ name, v string }{{"header", r.Header}, {"authorization", r.Authorization}, {"query", r.Query}} {
				if f.v != "" && !tokenRE.MatchString(f.v) {
					return fail(rp+"."+f.name, "%q is not a valid HTTP token", f.v)
				}
			}
			if strings.EqualFold(r.Header, "Authorization") {
				return fail(rp+".header", "use authorization: SCHEME to key on the Authorization header")
			}
		}
		switch u.Mode {
		case "", "queue", "reject":
		default:
			return fail(p+".mode", "%q: want queue or reject", u.Mode)
		}
		th := u.Throttle
		for j, m := range th.Retry.Methods {
			if !tokenRE.MatchString(m) || strings.ToUpper(m) != m {
				return fail(fmt.Sprintf("%s.throttle.retry.methods[%d]", p, j), "%q: want an upper-case HTTP method", m)
			}
		}
		if th.Retry.MaxAttempts < 0 || th.Retry.MaxAttempts > 10 || th.Retry.MaxAttempts == 0 && d.set(root, p+".throttle.retry.max_attempts") {
			return fail(p+".throttle.retry.max_attempts", "must be from 1 to 10 (1: no retry)")
		}
		if th.Retry.MaxBody < 0 {
			return fail(p+".throttle.retry.max_body", "must not be negative")
		}
		switch u.Learn.Mode {
		case "", "tighten", "replace", "off":
		default:
			return fail(p+".learn.mode", "%q: want tighten, replace or off", u.Learn.Mode)
		}
		if th := u.Learn.Threshold; th != nil && (*th < 0 || *th >= 1) {
			return fail(p+".learn.threshold", "%v: want a share from 0 to below 1, such as 0.05", *th)
		}
		switch {
		case u.MaxQueue == 0 && d.set(root, p+".max_queue"):
			return fail(p+".max_queue", "0 would queue nothing: write mode: reject to answer 429 at once, or leave max_queue out for the default 1000")
		case u.MaxQueue < 0 || u.MaxQueue > 100000:
			return fail(p+".max_queue", "%d: want a number of requests from 1 to 100000", u.MaxQueue)
		}
		b.duration(p+".max_wait", u.MaxWait, time.Millisecond, time.Hour,
			"write mode: reject to answer 429 at once, or leave max_wait out for the default 30s")
		if b.err != nil {
			return b.err
		}
		if u.WindowMargin == 0 && d.set(root, p+".window_margin") {
			return fail(p+".window_margin", "0 is not allowed: the margin absorbs the latency to the vendor; leave it out for 1%% of each window (10ms..1s), or write a small duration such as 1ms")
		}
		if err := checkMargin(u); err != nil {
			return fail(p+".window_margin", "%v", err)
		}
		if path, err := u.Answer.check(p + ".answer"); err != nil {
			return fail(path, "%v", err)
		}
		for j, o := range u.Overrides {
			op := fmt.Sprintf("%s.overrides[%d]", p, j)
			if (o.Prefix == "") == (o.Fingerprint == "") {
				return fail(op, "set exactly one of prefix and fingerprint")
			}
			if o.Fingerprint != "" && !fingerprintRE.MatchString(o.Fingerprint) {
				return fail(op+".fingerprint", "want 12 to 64 hex digits of the credential's SHA-256 (as the logs show it), not the credential")
			}
			if len(o.Limits) == 0 {
				return fail(op, "an override needs limits")
			}
		}
	}
	return nil
}

// bounds checks numbers and durations against their ranges and keeps the
// first error. A zero the file sets explicitly is refused: zero stands for
// "not set" (the default) and must not be taken for "none" or "off".
type bounds struct {
	d    *document
	root *yaml.Node
	err  error
}

func (b *bounds) fail(path, format string, args ...any) {
	if b.err == nil {
		b.err = b.d.errorf(b.d.node(b.root, path), "%s: %s", path, fmt.Sprintf(format, args...))
	}
}

// count checks a whole number; dflt is the default, for the message.
func (b *bounds) count(path string, v, lo, hi int, dflt string) {
	b.count64(path, int64(v), int64(lo), int64(hi), dflt)
}

// count64 is count for 64-bit numbers.
func (b *bounds) count64(path string, v, lo, hi int64, dflt string) {
	switch {
	case v == 0 && b.d.set(b.root, path):
		b.fail(path, "0 is not allowed: leave it out for the default %s, or write a number from %d to %d", dflt, lo, hi)
	case v != 0 && (v < lo || v > hi):
		b.fail(path, "%d: want a number from %d to %d", v, lo, hi)
	}
}

// duration checks a duration; zero says what to write instead.
func (b *bounds) duration(path string, v Duration, lo, hi time.Duration, zero string) {
	switch d := time.Duration(v); {
	case d == 0 && b.d.set(b.root, path):
		b.fail(path, "0 is not allowed: %s", zero)
	case d != 0 && (d < lo || d > hi):
		b.fail(path, "%v: want a duration from %v to %v", d, lo, hi)
	}
}

// checkMargin refuses a window_margin above a quarter of the shortest
// window it widens: the configured ones, or, with none configured, the
// 1s windows vendors report in their headers.
func checkMargin(u Upstream) error {
	m := time.Duration(u.WindowMargin)
	if m == 0 {
		return nil // 1% of each window, at most 1s: always within bounds
	}
	var shortest time.Duration
	from := ""
	consider := func(ls []Limit, where string) {
		for _, l := range ls {
			if shortest == 0 || l.Window < shortest {
				shortest, from = l.Window, fmt.Sprintf("the window of %s (%s)", where, quota.Limit(l).String())
			}
		}
	}
	consider(u.Limits, "limits")
	if u.Anonymous != nil {
		consider(u.Anonymous.Limits, "anonymous.limits")
	}
	for j, r := range u.Identity {
		consider(r.Limits, fmt.Sprintf("identity[%d].limits", j))
	}
	for j, o := range u.Overrides {
		consider(o.Limits, fmt.Sprintf("overrides[%d].limits", j))
	}
	if shortest == 0 {
		shortest, from = time.Second, "the 1s windows vendors report (no limits are configured)"
	}
	if m > shortest/4 {
		return fmt.Errorf("%v is above a quarter (%v) of %s; a margin widens every window, so keep it small against the window", m, shortest/4, from)
	}
	return nil
}

// checkHostPort checks a dial address: a host name or IP address, and a
// port from 1 to 65535.
func checkHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" {
		return fmt.Errorf("%q: want host:port, such as api.internal:443 or 10.0.0.5:8443", s)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || strings.TrimLeft(port, "0123456789") != "" {
		return fmt.Errorf("%q: port must be a number from 1 to 65535", s)
	}
	if net.ParseIP(host) == nil && (len(host) > 253 || !hostNameRE.MatchString(host)) {
		return fmt.Errorf("%q: %q is neither a host name nor an IP address", s, host)
	}
	return nil
}

var prefixRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,32}$`)

func (st *Store) validate(fail func(path, format string, args ...any) error) error {
	switch st.OnStoreError {
	case "", "local", "reject", "allow":
	default:
		return fail("store.on_store_error", "%q: want local, reject or allow", st.OnStoreError)
	}
	switch st.Backend {
	case "", "memory":
		return nil
	case "redis":
	default:
		return fail("store.backend", "%q: want memory or redis", st.Backend)
	}
	if st.URL == "" && len(st.Cluster) == 0 {
		return fail("store", "the redis backend needs url (redis://host:port) or cluster (a list of host:port)")
	}
	if st.URL != "" {
		scheme, rest, ok := strings.Cut(st.URL, "://")
		if !ok || scheme != "redis" && scheme != "rediss" || rest == "" {
			// Never echo the URL: it may hold a password.
			return fail("store.url", "want redis://[user:password@]host:port[/db] or rediss://...")
		}
	}
	for i, a := range st.Cluster {
		if err := checkAddr(a, false); err != nil {
			return fail(fmt.Sprintf("store.cluster[%d]", i), "%v", err)
		}
	}
	if st.Prefix != "" && !prefixRE.MatchString(st.Prefix) {
		return fail("store.prefix", "%q: want 1 to 32 letters, digits, '_', '.' or '-'", st.Prefix)
	}
	if st.Timeout != 0 && (time.Duration(st.Timeout) < time.Millisecond || time.Duration(st.Timeout) > 10*time.Second) {
		return fail("store.timeout", "%v: want 1ms to 10s (requests wait at most this long for Redis)", time.Duration(st.Timeout))
	}
	if st.Replicas < 0 || st.Replicas > 10000 {
		return fail("store.replicas", "want a whole number from 1 to 10000")
	}
	if st.KeySecretFile == "" {
		return fail("store", "the redis backend needs key_secret_file: a file holding the secret store keys are made with (every replica the same)")
	}
	return nil
}

// ReadKeySecret reads the store's key secret file: at least 16 bytes,
// surrounding white space removed.
func (st *Store) ReadKeySecret() ([]byte, error) {
	data, err := os.ReadFile(st.KeySecretFile)
	if err != nil {
		return nil, fmt.Errorf("store.key_secret_file: %w", err)
	}
	secret := bytes.TrimSpace(data)
	if len(secret) < 16 {
		return nil, fmt.Errorf("store.key_secret_file %s: the secret has %d bytes, want at least 16 (head -c 32 /dev/urandom | base64 makes one)", st.KeySecretFile, len(secret))
	}
	return secret, nil
}

// CheckAddr reports whether addr is a listen address, host:port, such as
// 127.0.0.1:8080 (port 0 picks a free port).
func CheckAddr(addr string) error { return checkAddr(addr, false) }

func checkAddr(addr string, emptyOK bool) error {
	if addr == "" {
		if emptyOK {
			return nil
		}
		return errors.New("want host:port")
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: want host:port, such as 127.0.0.1:8080", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%q: port must be a number from 0 to 65535", addr)
	}
	return nil
}

// CanonicalHost is how a host of an upstream's hosts is matched: in lower
// case, without a final dot ("API.Example.COM." is api.example.com), and
// "[::1]" as the host ::1. A port stays as written.
func CanonicalHost(h string) string {
	h = strings.ToLower(h)
	if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		return h[1 : len(h)-1] // "[::1]" is the host ::1, as requests name it
	}
	if host, port, err := net.SplitHostPort(h); err == nil && strings.HasSuffix(host, ".") {
		return net.JoinHostPort(strings.TrimSuffix(host, "."), port)
	}
	return strings.TrimSuffix(h, ".")
}

func checkHost(h string) error {
	if h == "" || strings.ContainsAny(h, "/?#@ *") {
		return fmt.Errorf("%q: want a host name, optionally with :port (no scheme, path or wildcard)", h)
	}
	if strings.Contains(h, ":") && !strings.HasSuffix(h, "]") {
		host, port, err := net.SplitHostPort(h)
		if err != nil || host == "" {
			return fmt.Errorf("%q: want host or host:port", h)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("%q: port must be a number from 1 to 65535", h)
		}
	}
	return nil
}
