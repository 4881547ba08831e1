package proxy

import (
	"net/http"
	"sync"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/config"
	"github.com/ratelimit-proxy/ratelimit-proxy/decision"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
	"go.uber.org/zap"
)

// decisionCapacity: a resource bound of the proxy refused the request.
const decisionCapacity = decision.Capacity

// tooManyKeys answers a request of a new key that the quota store has no
// room for: 503 with the time at which one of its keys may be empty.
func (s *Server) tooManyKeys(x *exchange, kl *quota.KeyLimitError) *http.Response {
	x.decision = decisionCapacity
	x.err = kl.Error()
	secs := ceilSeconds(kl.Delay())
	h := http.Header{}
	h.Set("Retry-After", itoa(secs))
	return jsonResponse(http.StatusServiceUnavailable, h, errorBody{Error: errorDetail{
		Code:              "TOO_MANY_KEYS",
		Message:           "the proxy holds as many keys as it may (resources.max_keys) and none is free yet; retry after " + itoa(secs) + "s",
		RetryAfterSeconds: secs,
		Source:            "proxy",
	}})
}

// resourceLogs are the limit logs of the resources section.
type resourceLogs struct {
	conns, tunnels, queued, buffered, keys, leafCerts *limitLog
}

func newResourceLogs(log *zap.Logger, r config.Resources) resourceLogs {
	return resourceLogs{
		conns:     newLimitLog(log, "max_client_conns", int64(r.MaxClientConns), "closed"),
		tunnels:   newLimitLog(log, "max_tunnels", int64(r.MaxTunnels), "refused"),
		queued:    newLimitLog(log, "max_queued", int64(r.MaxQueued), "refused"),
		buffered:  newLimitLog(log, "max_buffered_bytes", r.MaxBufferedBytes, "streamed"),
		keys:      newLimitLog(log, "max_keys", int64(r.MaxKeys), "refused"),
		leafCerts: newLimitLog(log, "max_leaf_certs", int64(r.MaxLeafCerts), "evicted"),
	}
}

// stop logs what each holds back.
func (r resourceLogs) stop() {
	for _, l := range []*limitLog{r.conns, r.tunnels, r.queued, r.buffered, r.keys, r.leafCerts} {
		l.stop()
	}
}

// limitLogEvery is the least time between two "resource limit reached"
// lines of one resource.
const limitLogEvery = 10 * time.Second

// limitLog reports that a resource bound was reached, in lines a metrics
// pipeline can count, without flooding the log: the first event logs at
// once; events within limitLogEvery of a line are counted and logged
// together when that time has passed. Each line names the resource, its
// bound, the events it reports and the total since start. It is safe for
// concurrent use.
type limitLog struct {
	log      *zap.Logger
	resource string // as the configuration names it, such as "max_queued"
	limit    int64
	event    string // what an event did: "refused", "evicted", "closed"

	mu      sync.Mutex
	pending int64 // events not logged yet
	total   int64
	timer   *time.Timer // set while lines are held back
	stopped bool
}

func newLimitLog(log *zap.Logger, resource string, limit int64, event string) *limitLog {
	return &limitLog{log: log, resource: resource, limit: limit, event: event}
}

// hit records one event.
func (l *limitLog) hit() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total++
	l.pending++
	if l.timer != nil || l.stopped {
		return // a line went out less than limitLogEvery ago
	}
	l.writeLocked()
	l.timer = time.AfterFunc(limitLogEvery, l.tick)
}

// tick logs the events held back, and keeps holding back for another
// period if there were any.
func (l *limitLog) tick() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.pending == 0 || l.stopped {
		l.timer = nil
		return
	}
	l.writeLocked()
	l.timer.Reset(limitLogEvery)
}

// stop logs the events held back and stops the timer.
func (l *limitLog) stop() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.timer != nil {
		l.timer.Stop()
		l.timer = nil
	}
	if l.pending > 0 {
		l.writeLocked()
	}
	l.stopped = true
}

func (l *limitLog) writeLocked() {
	l.log.Warn("resource limit reached",
		zap.String("resource", l.resource),
		zap.Int64("limit", l.limit),
		zap.Int64(l.event, l.pending),
		zap.Int64(l.event+"_total", l.total))
	l.pending = 0
}
