package proxy

import (
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/decision"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// BenchmarkLogLine is the cost of the one record and log line per request,
// with the encoder and buffered writer cmd/ratelimit-proxy uses.
func BenchmarkLogLine(b *testing.B) {
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	ws := &zapcore.BufferedWriteSyncer{WS: zapcore.AddSync(io.Discard), Size: 256 << 10, FlushInterval: time.Second}
	defer ws.Stop()
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(encCfg), ws, zapcore.InfoLevel))
	s := &Server{log: log, observers: decision.Observers{decision.Logger(log)}, maxLogged: 2048}
	r, _ := http.NewRequest(http.MethodGet, "http://api.example.com/v1/items?page=2", nil)
	up := &upstream{name: "example"}
	limits := &limitSet{shown: []quota.Limit{{Count: 300, Window: time.Minute}}}
	b.ReportAllocs()
	for b.Loop() {
		x := &exchange{start: time.Now(), up: up, decision: decisionPass, status: 200}
		x.id.fingerprint, x.id.rule, x.id.limits = "3f2a9c0d1e4b", "header:x-api-key", limits
		s.record(r, x)
	}
}
