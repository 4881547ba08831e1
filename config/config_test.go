package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
)

func TestExampleConfigLoads(t *testing.T) {
	cfg, err := Load(filepath.Join("..", "config.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:8080" {
		t.Errorf("listen = %q, want loopback 127.0.0.1:8080", cfg.Listen)
	}
	if !filepath.IsAbs(cfg.DataDir) || !strings.HasSuffix(cfg.CAKey, "ca-key.pem") {
		t.Errorf("data_dir %q / ca_key %q not resolved", cfg.DataDir, cfg.CAKey)
	}
	byName := map[string]Upstream{}
	for _, u := range cfg.Upstreams {
		byName[u.Name] = u
	}
	closient := byName["closient"]
	want := []quota.Limit{{Count: 300, Window: time.Minute}, {Count: 10000, Window: 24 * time.Hour}}
	if got := Limits(closient.Limits); len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("closient limits = %v, want %v", got, want)
	}
	if e := byName["engagor"]; len(e.Anonymous.Limits) != 1 || e.Anonymous.Limits[0].Count != 150 {
		t.Errorf("engagor anonymous limits = %v", e.Anonymous.Limits)
	}
	if c := byName["clarifai"]; c.Mode != "queue" || time.Duration(c.MaxWait) != 30*time.Second || c.MaxQueue != 1000 {
		t.Errorf("clarifai defaults: mode %q max_wait %v max_queue %d", c.Mode, time.Duration(c.MaxWait), c.MaxQueue)
	}
}

func TestDefaultsOfAMinimalConfig(t *testing.T) {
	cfg, err := Parse("min.yaml", []byte("upstreams:\n  - name: a\n    hosts: [a.example]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:8080" || cfg.Admin != "" || cfg.UnknownHosts != "allow" {
		t.Errorf("defaults: listen %q admin %q unknown_hosts %q", cfg.Listen, cfg.Admin, cfg.UnknownHosts)
	}
	if time.Duration(cfg.Timeouts.Dial) != 10*time.Second || cfg.MaxIdleConnsPerHost != 512 {
		t.Errorf("defaults: dial %v pool %d", time.Duration(cfg.Timeouts.Dial), cfg.MaxIdleConnsPerHost)
	}
}

func TestBadConfigsNameFileLineAndField(t *testing.T) {
	const up = "upstreams:\n  - name: a\n    hosts: [a]\n"
	tests := []struct {
		name, yaml string
		want       []string // substrings of the error
	}{
		{"unknown top-level field", "listen: 127.0.0.1:1\nlisten_addr: x\n",
			[]string{"bad.yaml:2:", "listen_addr", "unknown field"}},
		{"unknown nested field", "upstreams:\n  - name: a\n    hosts: [a]\n    limit: [1/1s]\n",
			[]string{"bad.yaml:4:", "upstreams[0].limit", "unknown field"}},
		{"bad limit", "upstreams:\n  - name: a\n    hosts: [a]\n    limits: [15/1s, 300/lol]\n",
			[]string{"bad.yaml:4:", "upstreams[0].limits[1]", `"300/lol"`}},
		{"bad duration", "upstreams:\n  - name: a\n    hosts: [a]\n    max_wait: soon\n",
			[]string{"bad.yaml:4:", "upstreams[0].max_wait", `"soon"`}},
		{"negative duration", "timeouts:\n  dial: -1s\n",
			[]string{"bad.yaml:2:", "timeouts.dial"}},
		{"host claimed twice", "upstreams:\n  - name: a\n    hosts: [api.x.com]\n  - name: b\n    hosts: [b.x.com, API.x.com]\n",
			[]string{"bad.yaml:5:", "upstreams[1].hosts[1]", "already claimed by upstreams[0].hosts[0] (a)"}},
		{"duplicate name", "upstreams:\n  - name: a\n    hosts: [a]\n  - name: a\n    hosts: [b]\n",
			[]string{"bad.yaml:4:", "upstreams[1].name", "already used"}},
		{"no hosts", "upstreams:\n  - name: a\n", []string{"bad.yaml:2:", "upstreams[0]", "no hosts"}},
		{"host with scheme", "upstreams:\n  - name: a\n    hosts: [https://a.com]\n", []string{"upstreams[0].hosts[0]"}},
		{"two identity kinds", "upstreams:\n  - name: a\n    hosts: [a]\n    identity:\n      - header: apikey\n        query: key\n",
			[]string{"bad.yaml:5:", "upstreams[0].identity[0]", "exactly one"}},
		{"bad mode", "upstreams:\n  - name: a\n    hosts: [a]\n    mode: drop\n", []string{"bad.yaml:4:", "upstreams[0].mode", `"drop"`}},
		{"credential as fingerprint", "upstreams:\n  - name: a\n    hosts: [a]\n    overrides:\n      - fingerprint: sk_live_secret\n        limits: [1/1s]\n",
			[]string{"bad.yaml:5:", "upstreams[0].overrides[0].fingerprint", "hex digits"}},
		{"override without limits", "upstreams:\n  - name: a\n    hosts: [a]\n    overrides:\n      - prefix: cpk_\n",
			[]string{"upstreams[0].overrides[0]", "needs limits"}},
		{"wrong kind", "upstreams:\n  name: a\n", []string{"bad.yaml:2:", "upstreams", "want a list"}},
		{"not a number", "max_idle_conns_per_host: many\n", []string{"bad.yaml:1:", "max_idle_conns_per_host", "whole number"}},
		{"bad listen", "listen: localhost\n", []string{"bad.yaml:1:", "listen", "host:port"}},
		{"bad unknown_hosts", "unknown_hosts: maybe\n", []string{"bad.yaml:1:", "unknown_hosts"}},
		{"bad connect_to", "upstreams:\n  - name: a\n    hosts: [a]\n    connect_to: nowhere\n", []string{"bad.yaml:4:", "connect_to"}},
		{"syntax error", "upstreams: [\n", []string{"bad.yaml"}},
		{"empty file", "", []string{"bad.yaml", "empty"}},
		{"alias", "listen: &x 127.0.0.1:1\nadmin: *x\n", []string{"bad.yaml:2:", "admin", "aliases are not supported"}},
		{"unknown store backend", "store:\n  backend: etcd\n", []string{"bad.yaml:2:", "store.backend", `"etcd"`}},
		{"redis without an address", "store:\n  backend: redis\n  key_secret_file: s\n", []string{"bad.yaml:2:", "store", "url"}},
		{"redis url of another scheme", "store:\n  backend: redis\n  url: http://u:hunter2@r:6379\n  key_secret_file: s\n",
			[]string{"bad.yaml:3:", "store.url", "redis://"}},
		{"bad cluster node", "store:\n  backend: redis\n  cluster: [r1:6379, r2]\n  key_secret_file: s\n",
			[]string{"bad.yaml:3:", "store.cluster[1]", "host:port"}},
		{"redis without a key secret", "store:\n  backend: redis\n  url: redis://r:6379\n", []string{"bad.yaml:2:", "store", "key_secret_file"}},
		{"bad on_store_error", "store:\n  on_store_error: panic\n", []string{"bad.yaml:2:", "store.on_store_error", `"panic"`}},
		{"store timeout too long", "store:\n  backend: redis\n  url: redis://r:6379\n  key_secret_file: s\n  timeout: 1m\n",
			[]string{"bad.yaml:5:", "store.timeout"}},
		{"negative replicas", "store:\n  backend: redis\n  url: redis://r:6379\n  key_secret_file: s\n  replicas: -2\n",
			[]string{"bad.yaml:5:", "store.replicas"}},
		{"bad prefix", "store:\n  backend: redis\n  url: redis://r:6379\n  key_secret_file: s\n  prefix: \"a{b}\"\n",
			[]string{"bad.yaml:5:", "store.prefix"}},

		// Bounds (issue 12): out-of-range values, and zeros that would
		// silently mean the default.
		{"max_queue 0", up + "    max_queue: 0\n", []string{"bad.yaml:4:", "upstreams[0].max_queue", "mode: reject", "leave max_queue out"}},
		{"max_queue negative", up + "    max_queue: -1\n", []string{"bad.yaml:4:", "upstreams[0].max_queue", "from 1 to 100000"}},
		{"max_queue too large", up + "    max_queue: 100001\n", []string{"bad.yaml:4:", "upstreams[0].max_queue", "from 1 to 100000"}},
		{"max_wait too long", up + "    max_wait: 1000000h\n", []string{"bad.yaml:4:", "upstreams[0].max_wait", "from 1ms to 1h0m0s"}},
		{"max_wait 0", up + "    max_wait: 0s\n", []string{"bad.yaml:4:", "upstreams[0].max_wait", "0 is not allowed", "mode: reject"}},
		{"window_margin above W/4", up + "    limits: [5/1s, 100/1m]\n    window_margin: 251ms\n", []string{"bad.yaml:5:", "upstreams[0].window_margin", "quarter (250ms)", "limits (5/1s)"}},
		{"window_margin 10h", up + "    limits: [350/1h]\n    window_margin: 10h\n", []string{"bad.yaml:5:", "upstreams[0].window_margin", "quarter (15m0s)"}},
		{"window_margin against an identity rule's window", up + "    limits: [350/1h]\n    identity: [{header: k, limits: [1/1s]}]\n    window_margin: 1s\n",
			[]string{"upstreams[0].window_margin", "identity[0].limits (1/1s)"}},
		{"window_margin against an override's window", up + "    limits: [350/1h]\n    overrides: [{prefix: a, limits: [2/2s]}]\n    window_margin: 1s\n",
			[]string{"upstreams[0].window_margin", "overrides[0].limits (2/2s)"}},
		{"window_margin against the anonymous window", up + "    limits: [350/1h]\n    anonymous: {limits: [1/1s]}\n    window_margin: 1s\n",
			[]string{"upstreams[0].window_margin", "anonymous.limits (1/1s)"}},
		{"window_margin without limits", up + "    window_margin: 300ms\n", []string{"upstreams[0].window_margin", "no limits are configured"}},
		{"window_margin 0", up + "    window_margin: 0s\n", []string{"bad.yaml:4:", "upstreams[0].window_margin", "0 is not allowed"}},
		{"connect_to not a host", up + "    connect_to: 'not a host:443'\n", []string{"bad.yaml:4:", "upstreams[0].connect_to", "neither a host name nor an IP address"}},
		{"connect_to without a host", up + "    connect_to: ':443'\n", []string{"bad.yaml:4:", "upstreams[0].connect_to", "want host:port"}},
		{"connect_to with a signed port", up + "    connect_to: 'a.internal:+443'\n", []string{"bad.yaml:4:", "upstreams[0].connect_to", "port"}},
		{"connect_to with a label too long", up + "    connect_to: '" + strings.Repeat("a", 64) + ".internal:443'\n", []string{"upstreams[0].connect_to", "neither"}},
		{"connect_to too long", up + "    connect_to: '" + strings.Repeat("a.", 127) + "aa:443'\n", []string{"upstreams[0].connect_to", "neither"}},
		{"max_attempts 0", up + "    throttle: {retry: {max_attempts: 0}}\n", []string{"bad.yaml:4:", "upstreams[0].throttle.retry.max_attempts", "1: no retry"}},
		{"pool size 0", "max_idle_conns_per_host: 0\n", []string{"bad.yaml:1:", "max_idle_conns_per_host", "0 is not allowed", "default 512"}},
		{"pool size negative", "max_idle_conns_per_host: -1\n", []string{"bad.yaml:1:", "max_idle_conns_per_host", "from 1 to 65536"}},
		{"pool size too large", "max_idle_conns_per_host: 65537\n", []string{"bad.yaml:1:", "max_idle_conns_per_host", "from 1 to 65536"}},
		{"timeout 0", "timeouts:\n  tunnel_idle: 0s\n", []string{"bad.yaml:2:", "timeouts.tunnel_idle", "no timeout", "default 5m"}},
		{"dial timeout too long", "timeouts:\n  dial: 6m\n", []string{"bad.yaml:2:", "timeouts.dial", "from 1ms to 5m0s"}},
		{"tls_handshake timeout too long", "timeouts:\n  tls_handshake: 6m\n", []string{"bad.yaml:2:", "timeouts.tls_handshake", "to 5m0s"}},
		{"response_header timeout too long", "timeouts:\n  response_header: 2h\n", []string{"bad.yaml:2:", "timeouts.response_header", "to 1h0m0s"}},
		{"idle_conn timeout too long", "timeouts:\n  idle_conn: 2h\n", []string{"bad.yaml:2:", "timeouts.idle_conn", "to 1h0m0s"}},
		{"client_idle timeout too long", "timeouts:\n  client_idle: 2h\n", []string{"bad.yaml:2:", "timeouts.client_idle", "to 1h0m0s"}},
		{"client_header timeout too long", "timeouts:\n  client_header: 6m\n", []string{"bad.yaml:2:", "timeouts.client_header", "to 5m0s"}},
		{"tunnel_idle timeout too long", "timeouts:\n  tunnel_idle: 25h\n", []string{"bad.yaml:2:", "timeouts.tunnel_idle", "to 24h0m0s"}},
		{"shutdown timeout too long", "timeouts:\n  shutdown: 2h\n", []string{"bad.yaml:2:", "timeouts.shutdown", "to 1h0m0s"}},
		{"timeout too short", "timeouts:\n  dial: 1us\n", []string{"bad.yaml:2:", "timeouts.dial", "from 1ms"}},
		{"header bytes too small", "requests:\n  max_header_bytes: 1023\n", []string{"bad.yaml:2:", "requests.max_header_bytes", "from 1024 to 1048576"}},
		{"header bytes too large", "requests:\n  max_header_bytes: 1048577\n", []string{"bad.yaml:2:", "requests.max_header_bytes", "from 1024 to 1048576"}},
		{"header bytes 0", "requests:\n  max_header_bytes: 0\n", []string{"bad.yaml:2:", "requests.max_header_bytes", "0 is not allowed", "65536"}},
		{"header fields too many", "requests:\n  max_header_fields: 10001\n", []string{"bad.yaml:2:", "requests.max_header_fields", "from 1 to 10000"}},
		{"header fields 0", "requests:\n  max_header_fields: 0\n", []string{"bad.yaml:2:", "requests.max_header_fields", "0 is not allowed"}},
		{"logged path too short", "log:\n  max_path_bytes: 63\n", []string{"bad.yaml:2:", "log.max_path_bytes", "from 64 to 65536"}},
		{"client_body 0", "timeouts:\n  client_body: 0s\n", []string{"bad.yaml:2:", "timeouts.client_body", "no timeout", "default 60s"}},
		{"client_body too long", "timeouts:\n  client_body: 2h\n", []string{"bad.yaml:2:", "timeouts.client_body", "to 1h0m0s"}},
		{"upstream_body_idle too long", "timeouts:\n  upstream_body_idle: 25h\n", []string{"bad.yaml:2:", "timeouts.upstream_body_idle", "to 24h0m0s"}},
		{"client conns 0", "resources:\n  max_client_conns: 0\n", []string{"bad.yaml:2:", "resources.max_client_conns", "0 is not allowed", "default 4096"}},
		{"client conns too few", "resources:\n  max_client_conns: 15\n", []string{"bad.yaml:2:", "resources.max_client_conns", "from 16 to 1048576"}},
		{"tunnels too many", "resources:\n  max_tunnels: 1048577\n", []string{"bad.yaml:2:", "resources.max_tunnels", "from 1 to 1048576"}},
		{"queued 0", "resources:\n  max_queued: 0\n", []string{"bad.yaml:2:", "resources.max_queued", "0 is not allowed", "4096"}},
		{"buffered bytes too few", "resources:\n  max_buffered_bytes: 65535\n", []string{"bad.yaml:2:", "resources.max_buffered_bytes", "from 65536 to 68719476736"}},
		{"buffered bytes not a number", "resources:\n  max_buffered_bytes: 64MiB\n", []string{"bad.yaml:2:", "resources.max_buffered_bytes", "whole number"}},
		{"keys too few", "resources:\n  max_keys: 15\n", []string{"bad.yaml:2:", "resources.max_keys", "from 16 to 100000000"}},
		{"leaf certs negative", "resources:\n  max_leaf_certs: -1\n", []string{"bad.yaml:2:", "resources.max_leaf_certs", "from 16 to 1048576"}},
		{"unknown resource", "resources:\n  max_conns: 10\n", []string{"bad.yaml:2:", "max_conns"}},
	}
	for _, tt := range tests {
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
}

// TestBadStoreURLIsNeverEchoed: a Redis URL may carry a password.
func TestBadStoreURLIsNeverEchoed(t *testing.T) {
	_, err := Parse("bad.yaml", []byte("store:\n  backend: redis\n  url: http://u:hunter2@r:6379\n  key_secret_file: s\n"))
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("error %v: want a refusal that does not repeat the URL", err)
	}
}

func TestStoreDefaultsToMemoryAndRedisKeepsItsSettings(t *testing.T) {
	cfg, err := Parse("min.yaml", []byte("upstreams: []\n"))
	if err != nil {
		t.Fatal(err)
	}
	st := cfg.Store
	if st.Backend != "memory" || st.OnStoreError != "local" || st.Replicas != 1 || time.Duration(st.Timeout) != 50*time.Millisecond || st.Prefix != "rlp" {
		t.Errorf("store defaults: %+v", st)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "c.yaml")
	yaml := "store:\n  backend: redis\n  cluster: [10.0.0.1:6379, 10.0.0.2:6379]\n  timeout: 20ms\n  on_store_error: reject\n  replicas: 3\n  key_secret_file: secret\n"
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err = Load(path)
	if err != nil {
		t.Fatal(err)
	}
	st = cfg.Store
	if st.Backend != "redis" || len(st.Cluster) != 2 || time.Duration(st.Timeout) != 20*time.Millisecond || st.OnStoreError != "reject" || st.Replicas != 3 {
		t.Errorf("store: %+v", st)
	}
	if st.KeySecretFile != filepath.Join(dir, "secret") {
		t.Errorf("key_secret_file %q, want it resolved against the config's directory", st.KeySecretFile)
	}
	if _, err := st.ReadKeySecret(); err == nil || !strings.Contains(err.Error(), "store.key_secret_file") {
		t.Errorf("missing secret file: %v", err)
	}
	os.WriteFile(st.KeySecretFile, []byte("short\n"), 0o600)
	if _, err := st.ReadKeySecret(); err == nil || !strings.Contains(err.Error(), "at least 16") {
		t.Errorf("short secret: %v", err)
	}
	os.WriteFile(st.KeySecretFile, []byte("  0123456789abcdef0123\n"), 0o600)
	if s, err := st.ReadKeySecret(); err != nil || string(s) != "0123456789abcdef0123" {
		t.Errorf("secret %q %v", s, err)
	}
}

func TestLoadNamesAMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if err == nil || !strings.Contains(err.Error(), "nope.yaml") {
		t.Fatalf("Load of a missing file: %v", err)
	}
}

func TestMarginIsOnePercentWithinBoundsAndAQuarterAtMost(t *testing.T) {
	u := Upstream{}
	for _, tt := range []struct{ w, want time.Duration }{
		{100 * time.Millisecond, 10 * time.Millisecond},
		{time.Second, 10 * time.Millisecond},
		{time.Minute, 600 * time.Millisecond},
		{24 * time.Hour, time.Second},
		{20 * time.Millisecond, 5 * time.Millisecond}, // a quarter of the window at most
	} {
		if got := u.Margin(tt.w); got != tt.want {
			t.Errorf("Margin(%v) = %v, want %v", tt.w, got, tt.want)
		}
	}
	u.WindowMargin = Duration(50 * time.Millisecond)
	if got := u.Margin(time.Hour); got != 50*time.Millisecond {
		t.Errorf("configured margin: got %v", got)
	}
	if got := u.Margin(100 * time.Millisecond); got != 25*time.Millisecond {
		t.Errorf("configured margin on a reported 100ms window: got %v, want a quarter of it", got)
	}
}

func TestSetDataDirMovesDefaultCAFilesOnly(t *testing.T) {
	cfg, err := Parse("c.yaml", []byte("data_dir: /a\n"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.SetDataDir("/data")
	if cfg.CACert != "/data/ca.pem" || cfg.CAKey != "/data/ca-key.pem" {
		t.Errorf("default CA files not moved: %q %q", cfg.CACert, cfg.CAKey)
	}
	cfg, _ = Parse("c.yaml", []byte("ca_cert: /etc/ca.pem\nca_key: /etc/ca-key.pem\n"))
	cfg.SetDataDir("/data")
	if cfg.CACert != "/etc/ca.pem" || cfg.DataDir != "/data" {
		t.Errorf("explicit CA files moved: %q, data dir %q", cfg.CACert, cfg.DataDir)
	}
}

func TestEveryProfileLoadsAndValidates(t *testing.T) {
	names := Profiles()
	if len(names) < 12 {
		t.Fatalf("%d profiles, want the 4 vendors and at least 8 more: %v", len(names), names)
	}
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			text := "upstreams:\n  - profile: " + name + "\n"
			if name == "shopify" {
				text += "    hosts: [shop.myshopify.com]\n"
			}
			cfg, err := Parse("p.yaml", []byte(text))
			if err != nil {
				t.Fatal(err)
			}
			u := cfg.Upstreams[0]
			if u.Name != name || len(u.Hosts) == 0 || len(u.Identity) == 0 || u.Throttle.Rules == nil {
				t.Errorf("profile %s: name %q hosts %v identity %v", name, u.Name, u.Hosts, u.Identity)
			}
		})
	}
	for _, vendor := range []string{"clari", "clarifai", "closient", "engagor"} {
		if _, err := Profile(vendor); err != nil {
			t.Errorf("vendor profile %s: %v", vendor, err)
		}
	}
}

func TestConfigFieldsOverrideTheProfile(t *testing.T) {
	cfg, err := Parse("p.yaml", []byte(`upstreams:
  - profile: closient
    name: closient-eu
    limits: [100/1m]
    throttle:
      default_wait: 9s
      rules:
        statuses: [429, 420]
`))
	if err != nil {
		t.Fatal(err)
	}
	u := cfg.Upstreams[0]
	if u.Name != "closient-eu" || u.Hosts[0] != "www.closient.com" || u.Identity[0].Header != "X-API-Key" {
		t.Errorf("profile fields lost: %+v", u)
	}
	if len(u.Limits) != 1 || u.Limits[0].Count != 100 || time.Duration(u.Throttle.DefaultWait) != 9*time.Second {
		t.Errorf("overrides not applied: limits %v default_wait %v", u.Limits, time.Duration(u.Throttle.DefaultWait))
	}
	if got := u.Throttle.Rules.Statuses; len(got) != 2 || got[1] != 420 {
		t.Errorf("rules.statuses = %v", got)
	}
	if len(u.Overrides) != 1 || u.Overrides[0].Prefix != "cpk_" {
		t.Errorf("the profile's overrides were lost: %v", u.Overrides)
	}
}

func TestUnknownProfileIsNamed(t *testing.T) {
	_, err := Parse("p.yaml", []byte("upstreams:\n  - profile: clsoient\n"))
	if err == nil || !strings.Contains(err.Error(), "p.yaml:2: upstreams[0].profile") || !strings.Contains(err.Error(), "closient") {
		t.Fatalf("unknown profile: %v", err)
	}
}

func TestThrottleAndLearnDefaultsAndChecks(t *testing.T) {
	cfg, err := Parse("p.yaml", []byte("upstreams:\n  - name: a\n    hosts: [a]\n"))
	if err != nil {
		t.Fatal(err)
	}
	u := cfg.Upstreams[0]
	if !*u.Throttle.Rewrite || !*u.Throttle.Retry.Enabled || u.Throttle.Retry.MaxAttempts != 3 || u.Learn.Mode != "tighten" || *u.Learn.Threshold != 0.05 {
		t.Errorf("defaults: %+v %+v", u.Throttle, u.Learn)
	}
	for _, tt := range []struct{ yaml, want string }{
		{"    throttle: {min_wait: 10s, max_wait: 1s}\n", "upstreams[0].throttle.min_wait"},
		{"    throttle: {min_wait: 2h}\n", "upstreams[0].throttle.min_wait"},
		{"    throttle: {default_wait: 2h}\n", "upstreams[0].throttle.default_wait"},
		{"    connect_to: x:abc\n", "upstreams[0].connect_to"},
		{"    identity: [{query: a b}]\n", "upstreams[0].identity[0].query"},
		{"    throttle: {retry: {methods: [get]}}\n", "upstreams[0].throttle.retry.methods[0]"},
		{"    learn: {mode: guess}\n", "upstreams[0].learn.mode"},
		{"    learn: {threshold: 1.5}\n", "upstreams[0].learn.threshold"},
		{"    throttle: {rules: {statuses: [many]}}\n", "upstreams[0].throttle.rules.statuses[0]"},
	} {
		_, err := Parse("p.yaml", []byte("upstreams:\n  - name: a\n    hosts: [a]\n"+tt.yaml))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: error %v, want one naming %s", tt.yaml, err, tt.want)
		}
	}
}

func TestAnonymousLimitsDefaultToTheUpstreamsUnlessEmptyOnPurpose(t *testing.T) {
	for _, tt := range []struct {
		yaml string
		want int
	}{
		{"", 1}, {"    anonymous: {}\n", 1}, {"    anonymous: {limits: }\n", 1}, {"    anonymous: {limits: []}\n", 0},
	} {
		cfg, err := Parse("a.yaml", []byte("upstreams:\n  - name: a\n    hosts: [a, \"[::1]\"]\n    limits: [5/1s]\n"+tt.yaml))
		if err != nil {
			t.Fatal(err)
		}
		if got := len(cfg.Upstreams[0].Anonymous.Limits); got != tt.want {
			t.Errorf("%q: %d anonymous limits, want %d", tt.yaml, got, tt.want)
		}
		if cfg.Upstreams[0].Hosts[1] != "::1" {
			t.Errorf("IPv6 host stored as %q, want ::1", cfg.Upstreams[0].Hosts[1])
		}
	}
}

// TestBoundsAcceptTheirEdges: each bound admits the values at its edges.
func TestBoundsAcceptTheirEdges(t *testing.T) {
	cfg, err := Parse("edges.yaml", []byte(`max_idle_conns_per_host: 65536
requests: {max_header_bytes: 1024, max_header_fields: 10000}
log: {max_path_bytes: 64}
timeouts: {dial: 5m, tls_handshake: 1ms, response_header: 1h, tunnel_idle: 24h}
upstreams:
  - name: a
    hosts: [a]
    limits: [5/1s, 100/1m]
    window_margin: 250ms
    max_wait: 1h
    max_queue: 100000
    connect_to: a.internal.:443
  - name: b
    hosts: [b]
    window_margin: 250ms
    max_queue: 1
    connect_to: "[::1]:8443"
  - name: c
    hosts: [c]
    connect_to: 10.0.0.5:1
    throttle: {retry: {max_attempts: 1}}
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Upstreams[0].MaxQueue != 100000 || cfg.Requests.MaxHeaderFields != 10000 {
		t.Errorf("edge values not kept: %+v %+v", cfg.Upstreams[0], cfg.Requests)
	}
}

func TestRequestAndLogBoundsDefaults(t *testing.T) {
	cfg, err := Parse("min.yaml", []byte("listen: 127.0.0.1:1\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Requests.MaxHeaderBytes != 64<<10 || cfg.Requests.MaxHeaderFields != 100 || cfg.Log.MaxPathBytes != 2048 {
		t.Errorf("defaults: requests %+v, log.max_path_bytes %d", cfg.Requests, cfg.Log.MaxPathBytes)
	}
	want := Resources{MaxClientConns: 4096, MaxTunnels: 1024, MaxQueued: 4096, MaxBufferedBytes: 64 << 20, MaxKeys: 100000, MaxLeafCerts: 1024}
	if cfg.Resources != want {
		t.Errorf("resources defaults %+v, want %+v", cfg.Resources, want)
	}
	if cfg.Timeouts.ClientBody != Duration(60*time.Second) || cfg.Timeouts.UpstreamBodyIdle != Duration(5*time.Minute) {
		t.Errorf("timeouts.client_body %v, upstream_body_idle %v; want 60s and 5m", cfg.Timeouts.ClientBody, cfg.Timeouts.UpstreamBodyIdle)
	}
}

// TestResourceBoundsAcceptTheirEdges: each resource bound admits the
// values at its edges.
func TestResourceBoundsAcceptTheirEdges(t *testing.T) {
	for _, yamlText := range []string{
		"resources: {max_client_conns: 16, max_tunnels: 1, max_queued: 1, max_buffered_bytes: 65536, max_keys: 16, max_leaf_certs: 16}\ntimeouts: {client_body: 1ms, upstream_body_idle: 1ms}\n",
		"resources: {max_client_conns: 1048576, max_tunnels: 1048576, max_queued: 1000000, max_buffered_bytes: 68719476736, max_keys: 100000000, max_leaf_certs: 1048576}\ntimeouts: {client_body: 1h, upstream_body_idle: 24h}\n",
	} {
		if _, err := Parse("edges.yaml", []byte(yamlText)); err != nil {
			t.Errorf("%s: %v", yamlText, err)
		}
	}
}
