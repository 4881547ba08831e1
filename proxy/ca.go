package proxy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/config"

	lru "github.com/hashicorp/golang-lru/v2"
)

// CA is the proxy's own certificate authority. It signs the leaf
// certificates that intercepted TLS connections present to clients. Leaf
// certificates are minted once per host name (in lower case, without a
// final dot) and kept in a cache of bounded size, least recently used
// first out; all of them share one ECDSA P-256 key generated at start.
type CA struct {
	cert    *x509.Certificate
	certPEM []byte
	key     *ecdsa.PrivateKey
	leafKey *ecdsa.PrivateKey

	mu      sync.Mutex // one mint at a time
	leaves  *lru.Cache[string, *tls.Certificate]
	evicted func() // called when the cache drops a leaf for a new one
	now     func() time.Time
}

// caValidity is the lifetime of a generated CA; leafValidity of a leaf.
const (
	caValidity   = 10 * 365 * 24 * time.Hour
	leafValidity = 90 * 24 * time.Hour
)

// LoadOrCreateCA reads the CA at certPath and keyPath, or, when neither
// file exists, generates an ECDSA P-256 CA and writes it there: the key
// file with mode 0600, its directory with 0700. A key file readable by group
// or others is refused.
func LoadOrCreateCA(certPath, keyPath string) (*CA, error) {
	_, certErr := os.Stat(certPath)
	_, keyErr := os.Stat(keyPath)
	switch {
	case errors.Is(certErr, fs.ErrNotExist) && errors.Is(keyErr, fs.ErrNotExist):
		if err := createCA(certPath, keyPath); err != nil {
			return nil, err
		}
	case errors.Is(certErr, fs.ErrNotExist):
		return nil, fmt.Errorf("CA key %s exists but its certificate %s does not: restore it, or remove both to generate a new CA", keyPath, certPath)
	case errors.Is(keyErr, fs.ErrNotExist):
		return nil, fmt.Errorf("CA certificate %s exists but its key %s does not: restore it, or remove both to generate a new CA", certPath, keyPath)
	}
	return loadCA(certPath, keyPath)
}

func createCA(certPath, keyPath string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generating CA key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "ratelimit-proxy CA " + now.UTC().Format("2006-01-02"), Organization: []string{"ratelimit-proxy"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("creating CA certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encoding CA key: %w", err)
	}
	for _, dir := range []string{filepath.Dir(certPath), filepath.Dir(keyPath)} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("creating CA directory: %w", err)
		}
	}
	// The key first, exclusively: two processes starting at once must not
	// write two different CAs.
	if err := writeExclusive(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return fmt.Errorf("writing CA key: %w", err)
	}
	if err := writeExclusive(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return fmt.Errorf("writing CA certificate: %w", err)
	}
	return nil
}

func writeExclusive(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func loadCA(certPath, keyPath string) (*CA, error) {
	info, err := os.Stat(keyPath)
	if err != nil {
		return nil, fmt.Errorf("reading CA key: %w", err)
	}
	if info.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("CA key %s is readable by others (mode %v): run chmod 600 %s", keyPath, info.Mode().Perm(), keyPath)
	}
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("reading CA certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("reading CA key: %w", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("CA %s / %s: %w", certPath, keyPath, err)
	}
	if !pair.Leaf.IsCA {
		return nil, fmt.Errorf("CA certificate %s is not a CA certificate", certPath)
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("CA key %s: want an ECDSA key (RSA leaf minting is ~400x slower); remove both files to generate one", keyPath)
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating leaf key: %w", err)
	}
	ca := &CA{
		cert:    pair.Leaf,
		certPEM: certPEM,
		key:     key,
		leafKey: leafKey,
		now:     time.Now,
	}
	ca.limitLeaves(config.DefaultMaxLeafCerts, nil)
	return ca, nil
}

// limitLeaves empties the leaf cache and bounds it to n certificates;
// evicted, when not nil, is called each time a leaf makes room for another.
func (ca *CA) limitLeaves(n int, evicted func()) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	ca.evicted = evicted
	ca.leaves, _ = lru.NewWithEvict(max(n, 1), func(string, *tls.Certificate) {
		if ca.evicted != nil {
			ca.evicted()
		}
	})
}

// CertPEM returns the CA certificate, PEM-encoded, for clients to trust.
func (ca *CA) CertPEM() []byte { return ca.certPEM }

// Fingerprint returns the SHA-256 of the CA certificate, in hex.
func (ca *CA) Fingerprint() string {
	sum := sha256.Sum256(ca.cert.Raw)
	return fmt.Sprintf("%x", sum)
}

// Leaf returns a certificate for host signed by the CA, minting it on first
// use and whenever the cached one is within a day of expiring. Spellings
// of one name share a certificate: host is taken in lower case, without
// brackets or a final dot, an IP address in its canonical form.
func (ca *CA) Leaf(host string) (*tls.Certificate, error) {
	host = leafName(host)
	now := ca.now()
	if leaf, ok := ca.leaves.Get(host); ok && now.Add(24*time.Hour).Before(leaf.Leaf.NotAfter) {
		return leaf, nil
	}
	ca.mu.Lock()
	defer ca.mu.Unlock()
	if leaf, ok := ca.leaves.Get(host); ok && now.Add(24*time.Hour).Before(leaf.Leaf.NotAfter) {
		return leaf, nil
	}
	leaf, err := ca.mint(host, now)
	if err != nil {
		return nil, fmt.Errorf("minting a certificate for %s: %w", host, err)
	}
	ca.leaves.Add(host, leaf)
	return leaf, nil
}

// leafName is the one spelling of host a leaf is minted and cached for.
func leafName(host string) string {
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if ip, err := netip.ParseAddr(host); err == nil {
		return ip.WithZone("").String()
	}
	host = strings.TrimSuffix(host, ".")
	for i := 0; i < len(host); i++ {
		if c := host[i]; 'A' <= c && c <= 'Z' {
			b := []byte(host)
			for j := i; j < len(b); j++ {
				if 'A' <= b[j] && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return host
}

func (ca *CA) mint(host string, now time.Time) (*tls.Certificate, error) {
	notAfter := now.Add(leafValidity)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: host},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if ip := net.ParseIP(host); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else {
		tmpl.DNSNames = []string{host}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &ca.leafKey.PublicKey, ca.key)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der, ca.cert.Raw}, PrivateKey: ca.leafKey, Leaf: leaf}, nil
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return big.NewInt(time.Now().UnixNano())
	}
	return n
}
