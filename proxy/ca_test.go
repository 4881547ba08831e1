package proxy

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestCAIsCreatedOnceWithAPrivateKeyFileAndReused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	cert, key := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
	ca1, err := LoadOrCreateCA(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]os.FileMode{key: 0o600, dir: 0o700} {
		info, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := info.Mode().Perm(); got != want {
			t.Errorf("%s mode %v, want %v", path, got, want)
		}
	}
	if _, ok := ca1.key.Public().(*ecdsa.PublicKey); !ok || ca1.key.Curve.Params().Name != "P-256" {
		t.Errorf("CA key is not ECDSA P-256")
	}
	ca2, err := LoadOrCreateCA(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	if ca1.Fingerprint() != ca2.Fingerprint() {
		t.Error("second start generated a new CA instead of reusing the first")
	}
}

func TestCARefusesAKeyReadableByOthers(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
	if _, err := LoadOrCreateCA(cert, key); err != nil {
		t.Fatal(err)
	}
	os.Chmod(key, 0o644)
	_, err := LoadOrCreateCA(cert, key)
	if err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("loading a 0644 key: %v, want a refusal naming chmod 600", err)
	}
}

func TestCARefusesHalfAPair(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
	os.WriteFile(cert, []byte("x"), 0o644)
	if _, err := LoadOrCreateCA(cert, key); err == nil || !strings.Contains(err.Error(), "does not") {
		t.Fatalf("certificate without key: %v", err)
	}
}

func TestLeafCertificatesAreCachedAndValid(t *testing.T) {
	dir := t.TempDir()
	ca, err := LoadOrCreateCA(filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	a1, err := ca.Leaf("api.example.com")
	if err != nil {
		t.Fatal(err)
	}
	a2, _ := ca.Leaf("api.example.com")
	if a1 != a2 {
		t.Error("leaf minted again for the same host")
	}
	ip, _ := ca.Leaf("127.0.0.1")
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	for host, leaf := range map[string]*x509.Certificate{"api.example.com": a1.Leaf, "127.0.0.1": ip.Leaf} {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: roots}); err != nil {
			t.Errorf("leaf for %s does not verify: %v", host, err)
		}
	}
	// Near expiry, a fresh leaf is minted.
	ca.now = func() time.Time { return time.Now().Add(leafValidity) }
	a3, _ := ca.Leaf("api.example.com")
	if a3 == a1 {
		t.Error("expiring leaf was not renewed")
	}
}

// TestLeafCacheIsCaseNormalisedAndBounded: the spellings of one host
// (issue 12 minted one certificate for each of 4000 case variants, and
// never forgot any) share one certificate, and many hosts keep at most the
// bound, the least recently used going first.
func TestLeafCacheIsCaseNormalisedAndBounded(t *testing.T) {
	dir := t.TempDir()
	ca, err := LoadOrCreateCA(filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	evictions := 0
	ca.limitLeaves(16, func() { evictions++ })
	first, err := ca.Leaf("api.example.com")
	if err != nil {
		t.Fatal(err)
	}
	name := "api.example.com"
	for i := range 4000 {
		b := []byte(name)
		for j := range b {
			if i>>(j%12)&1 == 1 && b[j] >= 'a' && b[j] <= 'z' {
				b[j] -= 'a' - 'A'
			}
		}
		spelling := string(b)
		if i%2 == 1 {
			spelling += "."
		}
		leaf, err := ca.Leaf(spelling)
		if err != nil {
			t.Fatal(err)
		}
		if leaf != first {
			t.Fatalf("%q got a certificate of its own", spelling)
		}
	}
	for _, ip := range []string{"::ffff:7f00:1", "[::FFFF:127.0.0.1]"} {
		a, _ := ca.Leaf(ip)
		b, _ := ca.Leaf("::ffff:127.0.0.1")
		if a != b {
			t.Errorf("%q and ::ffff:127.0.0.1 got different certificates", ip)
		}
	}
	if n := ca.leaves.Len(); n != 2 {
		t.Fatalf("%d leaves cached after 4000 spellings of one host and one IP, want 2", n)
	}
	for i := range 100 {
		if _, err := ca.Leaf(fmt.Sprintf("h%d.example.com", i)); err != nil {
			t.Fatal(err)
		}
		ca.Leaf("api.example.com") // kept in use
	}
	if n := ca.leaves.Len(); n != 16 {
		t.Errorf("%d leaves cached after 100 hosts, want the bound, 16", n)
	}
	if evictions != 102-16 {
		t.Errorf("%d evictions reported, want %d", evictions, 102-16)
	}
	if again, _ := ca.Leaf("API.example.com"); again != first {
		t.Error("the host used all along was evicted before hosts used once")
	}
	if _, ok := ca.leaves.Peek("h0.example.com"); ok {
		t.Error("the least recently used host is still cached")
	}
}

func BenchmarkLeafMint(b *testing.B) {
	dir := b.TempDir()
	ca, err := LoadOrCreateCA(filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem"))
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := ca.mint("api.example.com", time.Now()); err != nil {
			b.Fatal(err)
		}
	}
}

// TestTrustBundleIsTheSystemRootsPlusTheCA: the bundle holds every system
// root and the proxy's CA, each once, however often it is rewritten, and a
// "system" bundle holding only the proxy's CA is refused.
func TestTrustBundleIsTheSystemRootsPlusTheCA(t *testing.T) {
	dir := t.TempDir()
	ca, err := LoadOrCreateCA(filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots := filepath.Join(dir, "roots.pem")
	other, err := LoadOrCreateCA(filepath.Join(dir, "other.pem"), filepath.Join(dir, "other-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(roots, append([]byte("# a comment\n"), other.CertPEM()...), 0o644)
	bundle := filepath.Join(dir, "ca-bundle.pem")
	count := func() (n int, hasCA, hasRoot bool) {
		data, err := os.ReadFile(bundle)
		if err != nil {
			t.Fatal(err)
		}
		for {
			var b *pem.Block
			if b, data = pem.Decode(data); b == nil {
				return
			}
			n++
			hasCA = hasCA || bytes.Contains(ca.CertPEM(), pem.EncodeToMemory(b))
			hasRoot = hasRoot || bytes.Contains(other.CertPEM(), pem.EncodeToMemory(b))
		}
	}
	t.Setenv("SSL_CERT_FILE", roots)
	if err := WriteTrustBundle(bundle, ca); err != nil {
		t.Fatal(err)
	}
	if n, hasCA, hasRoot := count(); n != 2 || !hasCA || !hasRoot {
		t.Fatalf("bundle: %d certificates, CA %v, system root %v; want 2, both", n, hasCA, hasRoot)
	}
	t.Setenv("SSL_CERT_FILE", bundle) // a shell that already uses the bundle
	if err := WriteTrustBundle(bundle, ca); err != nil {
		t.Fatal(err)
	}
	if n, _, _ := count(); n != 2 {
		t.Fatalf("rewritten from itself: %d certificates, want 2", n)
	}
	t.Setenv("SSL_CERT_FILE", filepath.Join(dir, "ca.pem"))
	if err := WriteTrustBundle(bundle, ca); err == nil || !strings.Contains(err.Error(), "not a bundle of system roots") {
		t.Fatalf("a bundle of the proxy's CA alone: %v", err)
	}
}
