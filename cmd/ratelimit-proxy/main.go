// Command ratelimit-proxy runs the proxy.
//
//	ratelimit-proxy -config config.yaml [-listen ADDR] [-admin ADDR] [-data-dir DIR]
//	ratelimit-proxy check -config config.yaml
//	ratelimit-proxy fingerprint < credential.txt
//
// The first form serves until SIGINT or SIGTERM, then shuts down
// gracefully. check loads the configuration and reports the first problem.
// fingerprint prints the fingerprint of a credential read from standard
// input, as the logs show it and as overrides name it.
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/config"
	"github.com/ratelimit-proxy/ratelimit-proxy/proxy"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func main() {
	if err := run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "ratelimit-proxy:", err)
		os.Exit(1)
	}
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	cmd := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve", "check":
		fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
		fs.SetOutput(stderr)
		path := fs.String("config", "config.yaml", "the configuration `file`")
		listen := fs.String("listen", "", "proxy `address`, overriding the config's listen")
		admin := fs.String("admin", "", "admin `address`, overriding the config's admin (\"off\" disables)")
		dataDir := fs.String("data-dir", "", "data `directory` (the CA), overriding the config's data_dir")
		if err := fs.Parse(args); err != nil {
			return err
		}
		if fs.NArg() > 0 {
			return fmt.Errorf("unexpected argument %q", fs.Arg(0))
		}
		cfg, err := config.Load(*path)
		if err != nil {
			return err
		}
		if *listen != "" {
			if err := config.CheckAddr(*listen); err != nil {
				return fmt.Errorf("-listen: %w", err)
			}
			cfg.Listen = *listen
		}
		if *dataDir != "" {
			cfg.SetDataDir(*dataDir)
		}
		switch *admin {
		case "":
		case "off":
			cfg.Admin = ""
		default:
			if err := config.CheckAddr(*admin); err != nil {
				return fmt.Errorf("-admin: %w (or \"off\")", err)
			}
			cfg.Admin = *admin
		}
		if cfg.Admin != "" && cfg.Admin == cfg.Listen && !strings.HasSuffix(cfg.Listen, ":0") {
			return fmt.Errorf("the admin address and the proxy address are both %s: they must differ", cfg.Listen)
		}
		if cmd == "check" {
			fmt.Fprintf(stdout, "%s: ok (%d upstreams)\n", *path, len(cfg.Upstreams))
			return nil
		}
		return serve(cfg, stderr)
	case "fingerprint":
		line, err := bufio.NewReader(stdin).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("reading the credential from standard input: %w", err)
		}
		cred := strings.TrimSpace(line)
		if cred == "" {
			return errors.New("fingerprint reads one credential from standard input; got none")
		}
		sum := sha256.Sum256([]byte(cred))
		fmt.Fprintln(stdout, hex.EncodeToString(sum[:])[:12])
		return nil
	default:
		return fmt.Errorf("unknown command %q (want serve, check or fingerprint)", cmd)
	}
}

func newLogger(cfg config.Log, w io.Writer) (*zap.Logger, func(), error) {
	level, err := zapcore.ParseLevel(cfg.Level)
	if err != nil {
		return nil, nil, fmt.Errorf("log.level: %w", err)
	}
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	var enc zapcore.Encoder
	if cfg.Format == "console" {
		enc = zapcore.NewConsoleEncoder(encCfg)
	} else {
		enc = zapcore.NewJSONEncoder(encCfg)
	}
	// Buffered: one write per request would cost a system call each.
	ws := &zapcore.BufferedWriteSyncer{WS: zapcore.AddSync(w), Size: 256 << 10, FlushInterval: time.Second}
	logger := zap.New(zapcore.NewCore(enc, ws, level))
	return logger, func() { _ = ws.Stop() }, nil
}

func serve(cfg *config.Config, stderr io.Writer) error {
	// Catch signals before anything announces that the proxy is up.
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(stop)

	log, flush, err := newLogger(cfg.Log, stderr)
	if err != nil {
		return err
	}
	defer flush()

	srv, err := proxy.New(cfg, proxy.Options{Log: log, Store: quota.NewMemoryStore(nil)})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	var admin *http.Server
	errs := make(chan error, 2)
	if cfg.Admin != "" {
		aln, err := net.Listen("tcp", cfg.Admin)
		if err != nil {
			ln.Close()
			return fmt.Errorf("admin: %w", err)
		}
		admin = &http.Server{Handler: srv.AdminHandler(), ReadHeaderTimeout: 10 * time.Second}
		go func() { errs <- admin.Serve(aln) }()
		log.Info("admin listening", zap.String("addr", aln.Addr().String()))
	}
	log.Info("proxy listening",
		zap.String("addr", ln.Addr().String()),
		zap.String("ca_cert", cfg.CACert),
		zap.String("ca_sha256", srv.CA().Fingerprint()),
		zap.Int("upstreams", len(cfg.Upstreams)),
		zap.String("store", "memory"))
	_ = log.Sync()
	go func() { errs <- srv.Serve(ln) }()

	var serveErr error
	select {
	case sig := <-stop:
		log.Info("shutting down", zap.String("signal", sig.String()))
	case serveErr = <-errs:
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(cfg.Timeouts.Shutdown))
	defer cancel()
	if admin != nil {
		_ = admin.Shutdown(ctx)
	}
	shutErr := srv.Shutdown(ctx)
	log.Info("stopped")
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return serveErr
	}
	if shutErr != nil {
		return fmt.Errorf("shutdown: %w", shutErr)
	}
	return nil
}
