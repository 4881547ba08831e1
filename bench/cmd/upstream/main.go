// Command upstream is the benchmark suite's origin server: it answers every
// request with 200 and a fixed small body, over plain HTTP and over TLS with
// a certificate for 127.0.0.1 signed by a throwaway CA it writes to -ca-out.
// Once both listeners are up it prints one JSON line with their addresses.
//
//	upstream -ca-out /tmp/up-ca.pem [-http 127.0.0.1:0] [-https 127.0.0.1:0] [-body 128]
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
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/bench/internal/certs"
)

func main() {
	httpAddr := flag.String("http", "127.0.0.1:0", "plain HTTP listen `address`")
	httpsAddr := flag.String("https", "127.0.0.1:0", "HTTPS listen `address`")
	caOut := flag.String("ca-out", "", "write the CA that signed the HTTPS certificate to this `file`")
	bodySize := flag.Int("body", 128, "response body `bytes`")
	flag.Parse()
	if !strings.HasPrefix(*httpAddr, "127.") || !strings.HasPrefix(*httpsAddr, "127.") {
		log.Fatal("upstream: listen on loopback only")
	}

	body := []byte(strings.Repeat("x", *bodySize-1) + "\n")
	clen := strconv.Itoa(len(body))
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h["Content-Type"] = []string{"text/plain"}
		h["Content-Length"] = []string{clen}
		w.WriteHeader(http.StatusOK)
		w.Write(body)
	})

	ca, err := certs.NewCA("bench upstream CA")
	if err != nil {
		log.Fatal(err)
	}
	leaf, err := ca.Leaf("127.0.0.1", "localhost")
	if err != nil {
		log.Fatal(err)
	}
	if *caOut != "" {
		if err := os.WriteFile(*caOut, ca.CertPEM, 0o644); err != nil {
			log.Fatal(err)
		}
	}
	hl, err := net.Listen("tcp", *httpAddr)
	if err != nil {
		log.Fatal(err)
	}
	tl, err := net.Listen("tcp", *httpsAddr)
	if err != nil {
		log.Fatal(err)
	}
	mk := func() *http.Server {
		return &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
			ErrorLog: log.New(io.Discard, "", 0)}
	}
	hs, ts := mk(), mk()
	ts.TLSConfig = &tls.Config{Certificates: []tls.Certificate{*leaf}, NextProtos: []string{"http/1.1"}}
	ts.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){} // HTTP/1.1 only
	go hs.Serve(hl)
	go ts.ServeTLS(tl, "", "")
	out, _ := json.Marshal(map[string]string{"http": hl.Addr().String(), "https": tl.Addr().String()})
	fmt.Println(string(out))

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt, syscall.SIGTERM)
	<-stop
}
