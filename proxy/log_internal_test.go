package proxy

import (
	"io"
	"net/http"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// BenchmarkLogLine is the cost of the one log line per request, with the
// encoder and buffered writer cmd/ratelimit-proxy uses.
func BenchmarkLogLine(b *testing.B) {
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	ws := &zapcore.BufferedWriteSyncer{WS: zapcore.AddSync(io.Discard), Size: 256 << 10, FlushInterval: time.Second}
	defer ws.Stop()
	s := &Server{log: zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(encCfg), ws, zapcore.InfoLevel)), maxLogged: 2048}
	r, _ := http.NewRequest(http.MethodGet, "http://api.example.com/v1/items?page=2", nil)
	up := &upstream{name: "example"}
	b.ReportAllocs()
	for b.Loop() {
		x := &exchange{start: time.Now(), up: up, decision: decisionPass, status: 200}
		x.id.fingerprint, x.id.rule = "3f2a9c0d1e4b", "header:x-api-key"
		s.logExchange(r, x)
	}
}
