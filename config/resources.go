package config

// Defaults of the resources section.
const (
	DefaultMaxClientConns   = 4096
	DefaultMaxTunnels       = 1024
	DefaultMaxQueued        = 4096
	DefaultMaxBufferedBytes = 64 << 20
	DefaultMaxKeys          = 100000
	DefaultMaxLeafCerts     = 1024
)

func (r *Resources) fillDefaults() {
	for _, f := range []struct {
		v   *int
		def int
	}{
		{&r.MaxClientConns, DefaultMaxClientConns}, {&r.MaxTunnels, DefaultMaxTunnels},
		{&r.MaxQueued, DefaultMaxQueued}, {&r.MaxKeys, DefaultMaxKeys}, {&r.MaxLeafCerts, DefaultMaxLeafCerts},
	} {
		if *f.v == 0 {
			*f.v = f.def
		}
	}
	if r.MaxBufferedBytes == 0 {
		r.MaxBufferedBytes = DefaultMaxBufferedBytes
	}
}

func (r *Resources) check(b *bounds) {
	b.count("resources.max_client_conns", r.MaxClientConns, 16, 1<<20, "4096")
	b.count("resources.max_tunnels", r.MaxTunnels, 1, 1<<20, "1024")
	b.count("resources.max_queued", r.MaxQueued, 1, 1000000, "4096")
	b.count64("resources.max_buffered_bytes", r.MaxBufferedBytes, 64<<10, 64<<30, "67108864 (64 MiB)")
	b.count("resources.max_keys", r.MaxKeys, 16, 100000000, "100000")
	b.count("resources.max_leaf_certs", r.MaxLeafCerts, 16, 1<<20, "1024")
}
