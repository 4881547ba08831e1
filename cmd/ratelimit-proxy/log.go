package main

import (
	"io"
	"sync/atomic"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/config"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// logSink is the process's logger, whose level and format a reload may
// change: the logger writes through a core that is swapped whole.
type logSink struct {
	log  *zap.Logger
	ws   *zapcore.BufferedWriteSyncer
	core *atomic.Pointer[zapcore.Core]
}

// newLogSink logs to w, buffered: one write per request would cost a
// system call each. Call close to flush.
func newLogSink(cfg config.Log, w io.Writer) (*logSink, error) {
	ls := &logSink{
		ws:   &zapcore.BufferedWriteSyncer{WS: zapcore.AddSync(w), Size: 256 << 10, FlushInterval: time.Second},
		core: &atomic.Pointer[zapcore.Core]{},
	}
	if err := ls.apply(cfg); err != nil {
		return nil, err
	}
	ls.log = zap.New(switchCore{ls.core})
	return ls, nil
}

// apply switches to the level and format of cfg.
func (ls *logSink) apply(cfg config.Log) error {
	level, err := zapcore.ParseLevel(cfg.Level)
	if err != nil {
		return err
	}
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	var enc zapcore.Encoder
	if cfg.Format == "console" {
		enc = zapcore.NewConsoleEncoder(encCfg)
	} else {
		enc = zapcore.NewJSONEncoder(encCfg)
	}
	core := zapcore.NewCore(enc, ls.ws, level)
	ls.core.Store(&core)
	return nil
}

func (ls *logSink) close() { _ = ls.ws.Stop() }

// switchCore is a zapcore.Core that passes everything to the core in
// force.
type switchCore struct{ p *atomic.Pointer[zapcore.Core] }

func (s switchCore) current() zapcore.Core               { return *s.p.Load() }
func (s switchCore) Enabled(l zapcore.Level) bool        { return s.current().Enabled(l) }
func (s switchCore) With(f []zapcore.Field) zapcore.Core { return withCore{s, f} }
func (s switchCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	return s.current().Check(e, ce)
}
func (s switchCore) Write(e zapcore.Entry, f []zapcore.Field) error { return s.current().Write(e, f) }
func (s switchCore) Sync() error                                    { return s.current().Sync() }

// withCore is a switchCore with fields added (logger.With): rare, so the
// fields are added to the core in force at each entry.
type withCore struct {
	s      switchCore
	fields []zapcore.Field
}

func (w withCore) Enabled(l zapcore.Level) bool { return w.s.Enabled(l) }
func (w withCore) With(f []zapcore.Field) zapcore.Core {
	return withCore{w.s, append(append([]zapcore.Field(nil), w.fields...), f...)}
}
func (w withCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	return w.s.current().With(w.fields).Check(e, ce)
}
func (w withCore) Write(e zapcore.Entry, f []zapcore.Field) error {
	return w.s.current().With(w.fields).Write(e, f)
}
func (w withCore) Sync() error { return w.s.Sync() }
