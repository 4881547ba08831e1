// Command goproxy is the "bare goproxy" of the benchmark suite: a forward
// proxy built on github.com/elazarl/goproxy with no logic of its own, the
// floor that ratelimit-proxy's own logic adds to. It uses a transport that
// never reads HTTP_PROXY and whose idle pool is sized to the load, and, for
// HTTPS, goproxy's MITM with a throwaway ECDSA CA and a leaf-certificate
// cache. It prints one JSON line {"addr": ...} once listening.
//
//	goproxy -ca-out /tmp/gp-ca.pem -upstream-ca /tmp/up-ca.pem [-listen 127.0.0.1:0] [-pool 512]
package main

import (
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/elazarl/goproxy"
	"github.com/ratelimit-proxy/ratelimit-proxy/bench/internal/certs"
)

// certCache is a goproxy.CertStorage: one leaf per host.
type certCache struct {
	mu    sync.Mutex
	certs map[string]*tls.Certificate
}

func (c *certCache) Fetch(host string, gen func() (*tls.Certificate, error)) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cert := c.certs[host]; cert != nil {
		return cert, nil
	}
	cert, err := gen()
	if err != nil {
		return nil, err
	}
	c.certs[host] = cert
	return cert, nil
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "listen `address`")
	caOut := flag.String("ca-out", "", "write the interception CA to this `file`")
	upstreamCA := flag.String("upstream-ca", "", "PEM `file` of the CA trusted for upstream TLS")
	pool := flag.Int("pool", 512, "MaxIdleConnsPerHost of the upstream transport")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile to `file` until SIGTERM")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			log.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	if !strings.HasPrefix(*listen, "127.") {
		log.Fatal("goproxy: listen on loopback only")
	}

	roots, err := certs.Pool(*upstreamCA)
	if err != nil {
		log.Fatal(err)
	}
	ca, err := certs.NewCA("bench goproxy CA")
	if err != nil {
		log.Fatal(err)
	}
	if *caOut != "" {
		if err := os.WriteFile(*caOut, ca.CertPEM, 0o644); err != nil {
			log.Fatal(err)
		}
	}
	tlsCA, err := ca.TLS()
	if err != nil {
		log.Fatal(err)
	}

	p := goproxy.NewProxyHttpServer()
	p.Verbose = false
	p.Logger = log.New(io.Discard, "", 0)
	p.Tr = &http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       &tls.Config{RootCAs: roots},
		MaxIdleConns:          0,
		MaxIdleConnsPerHost:   *pool,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	p.CertStore = &certCache{certs: map[string]*tls.Certificate{}}
	mitm := &goproxy.ConnectAction{Action: goproxy.ConnectMitm, TLSConfig: goproxy.TLSConfigFromCA(&tlsCA)}
	p.OnRequest().HandleConnect(goproxy.FuncHttpsHandler(func(host string, _ *goproxy.ProxyCtx) (*goproxy.ConnectAction, string) {
		return mitm, host
	}))

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: p, ReadHeaderTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: log.New(io.Discard, "", 0)}
	go srv.Serve(ln)
	out, _ := json.Marshal(map[string]string{"addr": ln.Addr().String()})
	fmt.Println(string(out))

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt, syscall.SIGTERM)
	<-stop
}
