package decision_test

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/decision"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// logLine is what Logger writes for r, less the level and time.
func logLine(t *testing.T, r decision.Record) map[string]any {
	t.Helper()
	var buf bytes.Buffer
	enc := zapcore.NewJSONEncoder(zapcore.EncoderConfig{MessageKey: "msg"})
	decision.Logger(zap.New(zapcore.NewCore(enc, zapcore.AddSync(&buf), zapcore.InfoLevel))).Observe(r)
	var line map[string]any
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatalf("log output %q: %v", buf.String(), err)
	}
	return line
}

func TestLoggerWritesTheRecordAsOneLine(t *testing.T) {
	start := time.Unix(1_700_000_000, 0)
	tests := []struct {
		name string
		rec  decision.Record
		want map[string]any
	}{
		{
			"a queued request",
			decision.Record{Start: start, Duration: 1023900 * time.Microsecond, Method: "GET", Host: "api.test", Path: "/v1/items",
				Upstream: "api", Key: "7e35aaaea6b8", Identity: "header:apikey", StoreKey: "api/cred/7e35aaaea6b8ffff",
				Decision: decision.Queued, QueueWait: 812400 * time.Microsecond, Status: 200, Attempts: 1},
			map[string]any{"msg": "request", "upstream": "api", "method": "GET", "host": "api.test", "path": "/v1/items",
				"key": "7e35aaaea6b8", "identity": "header:apikey", "decision": "queued", "queue_wait_ms": 812.4, "status": 200.0, "latency_ms": 1023.9},
		},
		{
			"a retried, throttled request names its attempts, rule and error",
			decision.Record{Method: "POST", Host: "api.test", Path: "/p", Upstream: "api", Key: "anonymous", Identity: "anonymous",
				Decision: decision.Pass, Status: 429, Attempts: 2, Throttles: 2, ThrottleRule: "status:429", Error: "boom"},
			map[string]any{"msg": "request", "upstream": "api", "method": "POST", "host": "api.test", "path": "/p",
				"key": "anonymous", "identity": "anonymous", "decision": "pass", "queue_wait_ms": 0.0, "status": 429.0, "latency_ms": 0.0,
				"attempts": 2.0, "upstream_throttle": "status:429", "error": "boom"},
		},
		{
			"a CONNECT",
			decision.Record{Method: "CONNECT", Host: "api.test:443", Upstream: "api", Decision: decision.Intercept, Duration: 1500 * time.Microsecond},
			map[string]any{"msg": "connect", "host": "api.test:443", "decision": "intercept", "latency_ms": 1.5},
		},
		{
			"a refused CONNECT names why",
			decision.Record{Method: "CONNECT", Host: "x", Decision: decision.Error, Error: "not a host:port"},
			map[string]any{"msg": "connect", "host": "x", "decision": "error", "latency_ms": 0.0, "error": "not a host:port"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := logLine(t, tt.rec); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("log line\n got %v\nwant %v", got, tt.want)
			}
		})
	}
}

func TestRetriesAndThrottledReadTheAttempts(t *testing.T) {
	tests := []struct {
		attempts, throttles int
		retries             int
		throttled           bool
	}{
		{0, 0, 0, false}, // never admitted
		{1, 0, 0, false},
		{1, 1, 0, true},  // throttled, not retried
		{2, 1, 1, false}, // throttled, then a success
		{3, 3, 2, true},  // throttled every time
	}
	for _, tt := range tests {
		r := decision.Record{Attempts: tt.attempts, Throttles: tt.throttles}
		if r.Retries() != tt.retries || r.Throttled() != tt.throttled {
			t.Errorf("attempts %d throttles %d: Retries %d Throttled %v, want %d %v",
				tt.attempts, tt.throttles, r.Retries(), r.Throttled(), tt.retries, tt.throttled)
		}
	}
}

func TestObserversTellEachInOrder(t *testing.T) {
	var got []string
	obs := decision.Observers{
		observerFunc(func(r decision.Record) { got = append(got, "first "+r.Decision) }),
		observerFunc(func(r decision.Record) { got = append(got, "second "+r.Decision) }),
	}
	obs.Observe(decision.Record{Decision: decision.Pass})
	if want := []string{"first pass", "second pass"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("told %v, want %v", got, want)
	}
}

type observerFunc func(decision.Record)

func (f observerFunc) Observe(r decision.Record) { f(r) }
