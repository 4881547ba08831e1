package main

import (
	"context"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/config"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota/fallback"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota/redisstore"
	"go.uber.org/zap"
)

// openStore builds the quota store the config names: the memory store, or
// the Redis store behind its fallback (on_store_error). It returns the
// key secret the proxy keys credentials with (nil for memory) and a
// function that releases the store.
func openStore(full *config.Config, log *zap.Logger) (quota.Store, []byte, func(), error) {
	cfg := full.Store
	maxKeys := quota.WithMaxKeys(full.Resources.MaxKeys)
	if cfg.Backend != "redis" {
		return quota.NewMemoryStore(nil, maxKeys), nil, func() {}, nil
	}
	secret, err := cfg.ReadKeySecret()
	if err != nil {
		return nil, nil, nil, err
	}
	mode, err := fallback.ParseMode(cfg.OnStoreError)
	if err != nil {
		return nil, nil, nil, err
	}
	rdb, err := redisstore.NewClient(cfg.URL, cfg.Cluster)
	if err != nil {
		return nil, nil, nil, err
	}
	timeout := time.Duration(cfg.Timeout)
	// Redis down at start is a fallback, not a failure: only a schema of
	// another release stops the start.
	ctx, cancel := context.WithTimeout(context.Background(), max(timeout, time.Second))
	defer cancel()
	rs, err := redisstore.New(ctx, redisstore.Options{Client: rdb, Prefix: cfg.Prefix, Timeout: timeout})
	if err != nil {
		rdb.Close()
		return nil, nil, nil, err
	}
	fb := fallback.New(rs, fallback.Options{Mode: mode, Replicas: cfg.Replicas, Log: log.Named("store"), MaxKeys: full.Resources.MaxKeys})
	if err := rs.Ping(ctx); err != nil {
		log.Warn("redis does not answer at start: deciding without it until it does",
			zap.String("on_store_error", mode.String()), zap.Error(err))
	}
	return fb, secret, func() {
		fb.Close()
		rs.Close()
		rdb.Close()
	}, nil
}
