package proxy

import (
	"bytes"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// systemBundles are where operating systems keep their bundle of trusted
// roots, in the order Go's crypto/x509 looks for them on Linux; the last
// one is also where macOS keeps a copy of its roots.
var systemBundles = []string{
	"/etc/ssl/certs/ca-certificates.crt",                // Debian, Ubuntu, Gentoo, Arch
	"/etc/pki/tls/certs/ca-bundle.crt",                  // Fedora, RHEL 6
	"/etc/ssl/ca-bundle.pem",                            // OpenSUSE
	"/etc/pki/tls/cacert.pem",                           // OpenELEC
	"/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", // CentOS, RHEL 7
	"/etc/ssl/cert.pem",                                 // Alpine, macOS
}

// SystemRoots returns the PEM bundle of the system's trusted roots and the
// file it came from: the file SSL_CERT_FILE names when it is set (as Go
// itself reads it), else the first of the usual places that exists.
func SystemRoots() ([]byte, string, error) {
	if f := os.Getenv("SSL_CERT_FILE"); f != "" {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, "", fmt.Errorf("reading the system roots named by SSL_CERT_FILE: %w", err)
		}
		return data, f, nil
	}
	for _, f := range systemBundles {
		data, err := os.ReadFile(f)
		if err == nil {
			return data, f, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, "", fmt.Errorf("reading the system roots: %w", err)
		}
	}
	return nil, "", errors.New("no bundle of system roots found (looked in SSL_CERT_FILE and the usual places): set SSL_CERT_FILE to your system's CA bundle")
}

// WriteTrustBundle writes to path the system's roots followed by the CA's
// certificate, each certificate once: the file clients trust when all
// their HTTPS goes through the proxy, since intercepted hosts present
// certificates of the CA and tunnelled hosts their own, which chain to the
// system roots. The file is replaced atomically, mode 0644.
func WriteTrustBundle(path string, ca *CA) error {
	roots, from, err := SystemRoots()
	if err != nil {
		return err
	}
	var out bytes.Buffer
	seen := map[string]bool{}
	n := 0
	for _, data := range [][]byte{roots, ca.CertPEM()} {
		for {
			var block *pem.Block
			block, data = pem.Decode(data)
			if block == nil {
				break
			}
			if block.Type != "CERTIFICATE" || seen[string(block.Bytes)] {
				continue
			}
			seen[string(block.Bytes)] = true
			n++
			pem.Encode(&out, &pem.Block{Type: "CERTIFICATE", Bytes: block.Bytes})
		}
	}
	if n < 2 {
		return fmt.Errorf("%s holds no certificate besides the proxy's CA: it is not a bundle of system roots", from)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".ca-bundle-*.pem")
	if err != nil {
		return fmt.Errorf("writing the trust bundle: %w", err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename, there is nothing to remove
	if _, err := tmp.Write(out.Bytes()); err != nil {
		tmp.Close()
		return fmt.Errorf("writing the trust bundle: %w", err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("writing the trust bundle: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing the trust bundle: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing the trust bundle: %w", err)
	}
	return nil
}
