// Command proxyprof runs ratelimit-proxy in-process, as cmd/ratelimit-proxy
// wires it (JSON logger buffered 256 KiB, memory store), and writes a CPU
// profile of the process for -d. bench/profile.sh drives it with wrk or
// loadgen; the profile says where the proxy's CPU goes under load.
//
//	proxyprof -config bench.yaml -listen 127.0.0.1:18080 -d 10s -cpuprofile cpu.prof [-log-out FILE]
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/config"
	"github.com/ratelimit-proxy/ratelimit-proxy/proxy"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func main() {
	cfgPath := flag.String("config", "", "ratelimit-proxy configuration `file`")
	listen := flag.String("listen", "127.0.0.1:18080", "proxy `address` (loopback)")
	dur := flag.Duration("d", 10*time.Second, "profile duration (the process exits after it)")
	out := flag.String("cpuprofile", "cpu.prof", "CPU profile `file`")
	logOut := flag.String("log-out", "", "write the proxy's log here (default: discard)")
	hold := flag.Int("hold", 0, "instead of a CPU profile: open this many connections to the proxy, each sending one request of host -hold-host (which must queue), and report Go memory per held request")
	holdHost := flag.String("hold-host", "q.bench.test", "host of the held requests")
	memOut := flag.String("memprofile", "heap.prof", "with -hold: heap profile `file`")
	flag.Parse()
	if !strings.HasPrefix(*listen, "127.") {
		log.Fatal("proxyprof: loopback only")
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		log.Fatal(err)
	}
	var w io.Writer = io.Discard
	if *logOut != "" {
		f, err := os.Create(*logOut)
		if err != nil {
			log.Fatal(err)
		}
		defer f.Close()
		w = f
	}
	level, err := zapcore.ParseLevel(cfg.Log.Level)
	if err != nil {
		log.Fatal(err)
	}
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	ws := &zapcore.BufferedWriteSyncer{WS: zapcore.AddSync(w), Size: 256 << 10, FlushInterval: time.Second}
	logger := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(encCfg), ws, level))
	defer ws.Stop()

	srv, err := proxy.New(cfg, proxy.Options{Log: logger, Store: quota.NewMemoryStore(nil)})
	if err != nil {
		log.Fatal(err)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	go srv.Serve(ln)
	if *hold > 0 {
		holdRequests(ln.Addr().String(), *holdHost, *hold, *memOut)
		return
	}
	f, err := os.Create(*out)
	if err != nil {
		log.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		log.Fatal(err)
	}
	time.Sleep(*dur)
	pprof.StopCPUProfile()
	f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	srv.Shutdown(ctx)
}

func memStats() runtime.MemStats {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms
}

// holdRequests opens n connections to the proxy, each with one request that
// the configured limit holds in the queue, and reports the Go memory held
// per request: heap (the proxy's objects plus a few hundred bytes of this
// client's net.Conn) and goroutine stacks.
func holdRequests(addr, host string, n int, memOut string) {
	before := memStats()
	g0 := runtime.NumGoroutine()
	msg := []byte("GET http://" + host + "/ HTTP/1.1\r\nHost: " + host + "\r\nX-API-Key: queue-key\r\n\r\n")
	conns := make([]net.Conn, 0, n)
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			log.Fatal(err)
		}
		c.Write(msg)
		conns = append(conns, c)
	}
	time.Sleep(3 * time.Second)
	after := memStats()
	g1 := runtime.NumGoroutine()
	per := func(a, b uint64) float64 { return float64(int64(a)-int64(b)) / float64(n) }
	fmt.Printf("held %d requests: goroutines +%.2f per request\n", n, float64(g1-g0)/float64(n))
	fmt.Printf("  heap in use  %8.0f B/request\n", per(after.HeapInuse, before.HeapInuse))
	fmt.Printf("  stacks       %8.0f B/request\n", per(after.StackInuse, before.StackInuse))
	fmt.Printf("  Go sys total %8.0f B/request\n", per(after.Sys, before.Sys))
	if f, err := os.Create(memOut); err == nil {
		pprof.WriteHeapProfile(f)
		f.Close()
	}
	for _, c := range conns {
		c.Close()
	}
}
