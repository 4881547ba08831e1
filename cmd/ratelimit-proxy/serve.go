package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/admin"
	"github.com/ratelimit-proxy/ratelimit-proxy/config"
	"github.com/ratelimit-proxy/ratelimit-proxy/decision"
	"github.com/ratelimit-proxy/ratelimit-proxy/proxy"
	"go.uber.org/zap"
)

func runServe(c *cli, cmd *command, args []string) error {
	cfg, cf, err := configVerb(c, cmd, args, nil)
	if cfg == nil {
		return err
	}
	return serve(cfg, cf, c.stderr)
}

func serve(cfg *config.Config, cf *configFlags, stderr io.Writer) error {
	// Catch signals before anything announces that the proxy is up.
	stop := make(chan os.Signal, 2)
	signal.Notify(stop, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(stop)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	logs, err := newLogSink(cfg.Log, stderr)
	if err != nil {
		return fmt.Errorf("log: %w", err)
	}
	defer logs.close()
	log := logs.log

	if was := fitClientConns(&cfg.Resources, openFileLimit()); was > 0 {
		log.Warn("resources.max_client_conns lowered to half the open-file limit",
			zap.Int("configured", was), zap.Int("max_client_conns", cfg.Resources.MaxClientConns), zap.Uint64("open_file_limit", openFileLimit()))
	}
	store, keySecret, closeStore, err := openStore(cfg, log)
	if err != nil {
		return err
	}
	defer closeStore()
	recorder := admin.NewRecorder(0)
	srv, err := proxy.New(cfg, proxy.Options{Log: log, Store: store, KeySecret: keySecret, Observers: []decision.Observer{recorder}})
	if err != nil {
		return err
	}
	bundle := bundlePath(cfg)
	if err := proxy.WriteTrustBundle(bundle, srv.CA()); err != nil {
		log.Warn("the trust bundle of `ratelimit-proxy env` was not written", zap.String("path", bundle), zap.Error(err))
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	var adminSrv *http.Server
	errs := make(chan error, 2)
	if cfg.Admin != "" {
		aln, err := net.Listen("tcp", cfg.Admin)
		if err != nil {
			ln.Close()
			return fmt.Errorf("admin: %w", err)
		}
		h, err := admin.Handler(admin.Options{
			Recorder: recorder,
			Store:    store,
			CACert:   srv.CA().CertPEM(),
			Conns:    srv.OpenConns,
			Reloads:  func() uint64 { return srv.Reloads().Applied },
		})
		if err != nil {
			ln.Close()
			aln.Close()
			return err
		}
		// The clients and client_tokens rules apply to the admin endpoints.
		adminSrv = &http.Server{Handler: srv.GuardAdmin(h), ReadHeaderTimeout: 10 * time.Second}
		go func() { errs <- adminSrv.Serve(aln) }()
		log.Info("admin listening", zap.String("addr", aln.Addr().String()))
		if !isLoopback(aln.Addr()) && len(cfg.ClientTokens) == 0 {
			log.Warn("the admin address is not loopback: any client from the clients networks sees the metrics and the fingerprints of the keys", zap.String("addr", aln.Addr().String()))
		}
	}
	log.Info("proxy listening",
		zap.String("addr", ln.Addr().String()),
		zap.String("ca_cert", cfg.CACert),
		zap.String("ca_sha256", srv.CA().Fingerprint()),
		zap.Int("upstreams", len(cfg.Upstreams)),
		zap.String("store", cfg.Store.Backend))
	_ = log.Sync()
	go func() { errs <- srv.Serve(ln) }()

	changes, stopWatch := watchConfig(cf.path, log)
	defer stopWatch()

	running := cfg
	var serveErr error
loop:
	for {
		select {
		case sig := <-stop:
			log.Info("shutting down", zap.String("signal", sig.String()),
				zap.Duration("deadline", time.Duration(running.Timeouts.Shutdown)))
			break loop
		case <-hup:
			running = reload(srv, logs, cf, running)
		case <-changes:
			running = reload(srv, logs, cf, running)
		case serveErr = <-errs:
			break loop
		}
	}
	_ = log.Sync()

	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(running.Timeouts.Shutdown))
	defer cancel()
	go func() {
		select {
		case sig := <-stop:
			log.Warn("second signal: answering what still waits now", zap.String("signal", sig.String()))
			cancel()
		case <-ctx.Done():
		}
	}()
	shutErr := srv.Shutdown(ctx)
	if adminSrv != nil {
		actx, acancel := context.WithTimeout(context.Background(), time.Second)
		_ = adminSrv.Shutdown(actx)
		acancel()
	}
	if errors.Is(shutErr, context.DeadlineExceeded) || errors.Is(shutErr, context.Canceled) {
		// Expected when requests still waited: they were answered 503.
		log.Info("shutdown deadline reached: requests still waiting were answered 503")
		shutErr = nil
	}
	log.Info("stopped")
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return serveErr
	}
	if shutErr != nil {
		return fmt.Errorf("shutdown: %w", shutErr)
	}
	return nil
}

// reload reloads the configuration file through srv.Reload, which logs
// the outcome, and returns the configuration in force after it. Changes of
// listen, admin and data_dir are refused: they need a restart.
func reload(srv *proxy.Server, logs *logSink, cf *configFlags, running *config.Config) *config.Config {
	var next *config.Config
	err := srv.Reload(func() (*config.Config, error) {
		cfg, err := cf.load()
		if err != nil {
			return nil, err
		}
		fitClientConns(&cfg.Resources, openFileLimit()) // as at start
		var fields []string
		if cfg.Listen != running.Listen {
			fields = append(fields, "listen")
		}
		if cfg.Admin != running.Admin {
			fields = append(fields, "admin")
		}
		if cfg.DataDir != running.DataDir {
			fields = append(fields, "data_dir")
		}
		if len(fields) > 0 {
			return nil, &proxy.RestartNeededError{Fields: fields}
		}
		next = cfg
		return cfg, nil
	})
	if err != nil {
		return running
	}
	if err := logs.apply(next.Log); err != nil {
		// Load checked the log settings: this does not happen.
		logs.log.Error("log settings not applied", zap.Error(err))
	}
	return next
}

func isLoopback(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}
