package decision

import (
	"time"

	"go.uber.org/zap"
)

// Logger returns the Observer that writes the one log line per exchange at
// info level: "request" for requests, "connect" for CONNECTs. The line
// names the key by its fingerprint only and the path without its query.
func Logger(log *zap.Logger) Observer { return logger{log} }

type logger struct{ log *zap.Logger }

func (l logger) Observe(r Record) {
	if r.Method == "CONNECT" {
		if ce := l.log.Check(zap.InfoLevel, "connect"); ce != nil {
			fields := []zap.Field{zap.String("host", r.Host), zap.String("decision", r.Decision), zap.Float64("latency_ms", ms(r.Duration))}
			if r.Error != "" {
				fields = append(fields, zap.String("error", r.Error))
			}
			ce.Write(fields...)
		}
		return
	}
	ce := l.log.Check(zap.InfoLevel, "request")
	if ce == nil {
		return
	}
	fields := make([]zap.Field, 0, 13)
	fields = append(fields,
		zap.String("upstream", r.Upstream),
		zap.String("method", r.Method),
		zap.String("host", r.Host),
		zap.String("path", r.Path),
		zap.String("key", r.Key),
		zap.String("identity", r.Identity),
		zap.String("decision", r.Decision),
		zap.Float64("queue_wait_ms", ms(r.QueueWait)),
		zap.Int("status", r.Status),
		zap.Float64("latency_ms", ms(r.Duration)),
	)
	if r.Attempts > 1 {
		fields = append(fields, zap.Int("attempts", r.Attempts))
	}
	if r.ThrottleRule != "" {
		fields = append(fields, zap.String("upstream_throttle", r.ThrottleRule))
	}
	if r.Error != "" {
		fields = append(fields, zap.String("error", r.Error))
	}
	ce.Write(fields...)
}

// ms is d in milliseconds, to the microsecond.
func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
