package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
	"github.com/ratelimit-proxy/ratelimit-proxy/signals"
	"go.uber.org/zap"
)

// gate is one store key a request must pass: the credential's key, with its
// limits, and, when the route is known to fall in an upstream bucket, the
// bucket's key, which carries only what the upstream taught about it.
type gate struct {
	key     string
	limits  []quota.Limit
	transit time.Duration     // how long the request may be on its way (a streamed body), or 0
	res     quota.Reservation // as admitted; not changed once the request is sent

	mu   sync.Mutex
	end  gateEnd
	sent quota.Reservation // the reservation as last settled
}

// gateEnd is how a gate's reservation ended.
type gateEnd uint8

const (
	gateOpen gateEnd = iota
	gateSettled
	gateCancelled
)

// settle records that the request left at sentAt: once, or again later
// when net/http wrote it a second time (a reused connection turned out
// closed), so that the store counts the later write, which is the one the
// upstream counted. A cancelled gate stays cancelled.
func (g *gate) settle(s *Server, sentAt time.Time) { g.settleIf(s, sentAt, false) }

// settleOpen settles the gate at sentAt if nothing settled or cancelled
// it yet.
func (g *gate) settleOpen(s *Server, sentAt time.Time) { g.settleIf(s, sentAt, true) }

func (g *gate) settleIf(s *Server, sentAt time.Time, onlyOpen bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	r := g.res
	switch g.end {
	case gateCancelled:
		return
	case gateSettled:
		if onlyOpen || !sentAt.After(g.sent.Sent) {
			return
		}
		r = g.sent
	}
	ctx, cancel := s.storeContext(context.Background())
	defer cancel()
	r, err := s.store.Settle(ctx, r, sentAt)
	if err != nil {
		s.log.Warn("settling a slot failed", zap.Error(err))
		if g.end == gateOpen {
			r.Sent = sentAt
		}
	}
	g.end, g.sent = gateSettled, r
}

// cancel gives the gate's slot back, unless it was settled.
func (g *gate) cancel(s *Server) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.end != gateOpen || !g.res.OK {
		return
	}
	g.end = gateCancelled
	ctx, cancel := s.storeContext(context.Background())
	defer cancel()
	if err := s.store.Cancel(ctx, g.res); err != nil {
		s.log.Warn("giving a slot back failed", zap.Error(err))
	}
}

// errStore marks a failure of the quota store.
type errStore struct{ err error }

func (e errStore) Error() string { return "quota store: " + e.err.Error() }
func (e errStore) Unwrap() error { return e.err }

// upstreamTransport is roundTrip as an http.RoundTripper, for the
// upgrader: the exchange travels in the request's context.
type upstreamTransport struct{ s *Server }

func (t upstreamTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	x, _ := req.Context().Value(exchangeKey{}).(*exchange)
	if x == nil || x.up == nil {
		return t.s.transport.RoundTrip(req)
	}
	return t.s.roundTrip(req, x)
}

// roundTrip admits, sends, inspects and, when the upstream throttles,
// holds, retries or rewrites.
func (s *Server) roundTrip(req *http.Request, x *exchange) (*http.Response, error) {
	up := x.up
	replay, streams, err := s.bufferBody(req, x)
	if err != nil {
		return nil, err
	}
	transit := time.Duration(0)
	if streams {
		// The body streams from the client after the release: the request
		// is on its way until its last byte leaves, which the body's clock
		// bounds from the release on.
		transit = time.Duration(s.timeouts.ClientBody) + transitSlack
	}
	route := ""
	if up.buckets.used() {
		route = req.Method + " " + req.URL.Path
	}
	for attempt := 1; ; attempt++ {
		x.attempts = attempt
		// The first attempt uses the exchange's own gates; a retry gets
		// fresh ones, as a late callback of the previous attempt may still
		// settle its own.
		g, ptrs := &x.gates, &x.gatePtrs
		if attempt > 1 {
			g, ptrs = new([2]gate), new([2]*gate)
		}
		g[0] = gate{key: x.id.key, limits: x.id.limits.enforced(), transit: transit}
		*ptrs = [2]*gate{&g[0], &g[1]}
		gates := ptrs[:1]
		if b := up.buckets.get(route); route != "" && b != "" {
			g[1] = gate{key: x.id.key + "#" + b, transit: transit}
			gates = gates[:2]
		}
		if local, err := s.admit(req.Context(), x, gates); local != nil || err != nil {
			if local != nil {
				local.Request = req
			}
			return local, err
		}
		if c, ok := req.Body.(*bodyClock); ok && streams {
			c.start() // released: the body's time runs
		}
		sentAt, resp, err := s.send(req, x, gates, attempt)
		if err != nil {
			s.abandonProbes(gates) // no answer: another request probes
			return nil, err
		}
		verdict, wait, bucket := s.inspect(x, resp, sentAt, route)
		if !verdict.Throttle {
			s.endProbes(gates)
			return resp, nil
		}
		x.throttle = verdict.Rule
		x.throttles++
		holdKey := x.id.key
		if bucket != "" && resp.Header.Get("X-RateLimit-Global") == "" {
			holdKey = x.id.key + "#" + bucket
		}
		if err := s.storeCall(func(ctx context.Context) error { return s.store.Hold(ctx, holdKey, wait) }); err != nil {
			s.log.Warn("holding a key failed", zap.String("key", x.id.fingerprint), zap.Error(err))
		}
		for _, g := range gates {
			if g.key != holdKey && g.res.Probe {
				// This gate's probe got its answer: the throttle was the
				// other gate's.
				if err := s.storeCall(func(ctx context.Context) error { return s.store.EndProbe(ctx, g.res) }); err != nil {
					s.log.Warn("ending a probe failed", zap.Error(err))
				}
			}
		}
		if replay != nil && attempt < up.throttle.maxAttempts && !up.reject && time.Since(x.start)+wait <= up.maxWait {
			io.Copy(io.Discard, io.LimitReader(resp.Body, signals.MaxBody))
			resp.Body.Close()
			req.Body = replay()
			continue
		}
		if up.throttle.rewrite {
			rewriteThrottle(resp, x, wait)
		}
		return resp, nil
	}
}

// admit reserves a slot at every gate and waits for it. It returns a local
// 429 when the request may not wait that long, ctx's error when the client
// leaves, or an errStore.
func (s *Server) admit(ctx context.Context, x *exchange, gates []*gate) (*http.Response, error) {
	up := x.up
	maxWait := time.Duration(0)
	if !up.reject {
		maxWait = max(up.maxWait-time.Since(x.start), 0)
	}
	// Every request in admission counts against resources.max_queued:
	// beyond it a request may only leave at once (or take a slot booked
	// for it), as in reject mode, and is refused otherwise.
	queueFull := false
	if n := s.admitting.Add(1); n > int64(s.resources.MaxQueued) && maxWait > 0 {
		queueFull, maxWait = true, 0
	}
	defer s.admitting.Add(-1)
	// A scout makes the others wait one round trip: never in reject mode,
	// where nothing waits.
	scout := !up.learn.off && !up.reject
	for i, g := range gates {
		req := quota.Request{Key: g.key, Limits: g.limits, MaxWait: maxWait, MaxQueue: up.maxQueue, Scout: scout && i == 0}
		if i == 0 {
			req.Book = refusalBooking
		}
		req.Transit = g.transit
		sctx, cancel := s.storeContext(ctx)
		res, err := s.store.Reserve(sctx, req)
		cancel()
		if err != nil {
			s.cancelGates(gates[:i])
			var kl *quota.KeyLimitError
			if errors.As(err, &kl) {
				s.limits.keys.hit()
				return s.tooManyKeys(x, kl), nil
			}
			return nil, errStore{err}
		}
		g.res = res
		if !res.OK {
			s.cancelGates(gates[:i])
			x.res = res
			x.decision = decisionRejected
			if res.QueueFull || queueFull && !res.Held {
				x.decision = decisionQueueFull
			}
			if queueFull && !res.QueueFull {
				s.limits.queued.hit()
			}
			return s.rateLimited(x), nil
		}
	}
	if x.decision == "" {
		x.decision = decisionPass
	}
	// In reject mode a request waits only for a booking it took (a retry
	// back a little early, or a little off its slot), never longer than a
	// booking waits for its caller.
	waitLimit := up.maxWait
	if up.reject {
		waitLimit = refusalBooking.Early + refusalBooking.Grace
	}
	for {
		var wait time.Duration
		var wake <-chan struct{}
		for _, g := range gates {
			if d := g.res.Delay(); d > 0 {
				wait = max(wait, d)
				if g.res.Wake != nil {
					wake = g.res.Wake
				}
			}
		}
		if wait == 0 {
			x.res = gates[0].res
			return nil, nil
		}
		left := waitLimit - time.Since(x.start)
		if wait > left && (wake == nil || left <= 0) {
			// The store moved the slot (a hold, a probe, a late send)
			// beyond what the request may wait: answer now.
			return s.refuseAfterWait(x, gates, wait), nil
		}
		// Queued: wait for the slot (or until the key's state changes),
		// then let the store check it again against what it learned
		// meanwhile (earlier requests that left later than booked, holds);
		// it may name a later slot.
		x.decision = decisionQueued
		start := time.Now()
		t := time.NewTimer(min(wait, max(left, 0)))
		select {
		case <-t.C:
		case <-wake:
			t.Stop()
		case <-ctx.Done():
			t.Stop()
			s.cancelGates(gates)
			x.wait += time.Since(start)
			return nil, ctx.Err()
		}
		x.wait += time.Since(start)
		for _, g := range gates {
			if g.res.Delay() > 0 {
				sctx, cancel := s.storeContext(ctx)
				res, err := s.store.Release(sctx, g.res)
				cancel()
				if err != nil {
					s.cancelGates(gates)
					return nil, errStore{err}
				}
				g.res = res
			}
		}
		if time.Since(x.start) >= waitLimit && !released(gates) {
			return s.refuseAfterWait(x, gates, wait), nil
		}
	}
}

// released reports whether every gate may go now.
func released(gates []*gate) bool {
	for _, g := range gates {
		if g.res.Delay() > 0 {
			return false
		}
	}
	return true
}

// refuseAfterWait gives back a queued request's slots and answers it with
// the local 429, naming the latest of its gates' times.
func (s *Server) refuseAfterWait(x *exchange, gates []*gate, wait time.Duration) *http.Response {
	s.cancelGates(gates)
	for _, g := range gates {
		if g.res.Delay() >= wait {
			x.res = g.res
		}
	}
	x.res.OK = false
	x.decision = decisionRejected
	return s.rateLimited(x)
}

// refusalBooking makes a refusal's Retry-After a promise: the store keeps
// the slot it names for a second after it (the client's own delay), and a
// caller back up to a quarter second early takes it and waits.
var refusalBooking = quota.Booking{Round: time.Second, Grace: time.Second, Early: 250 * time.Millisecond}

// storeTimeout bounds every call to the quota store.
const storeTimeout = 2 * time.Second

// storeCall runs f with a context bounded by storeTimeout.
func (s *Server) storeCall(f func(ctx context.Context) error) error {
	ctx, cancel := s.storeContext(context.Background())
	defer cancel()
	return f(ctx)
}

// storeContext bounds a store call by storeTimeout (and by ctx).
func (s *Server) storeContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, storeTimeout)
}

// send writes the request upstream and settles every gate with the time it
// was written, so that later requests are timed from when this one really
// left. A request that provably never left gives its slots back.
//
// The first attempt's trace is already in req's context (see forward); a
// retry adds its own, composed with it, whose 1xx answers the first one
// passes on.
func (s *Server) send(req *http.Request, x *exchange, gates []*gate, n int) (time.Time, *http.Response, error) {
	a := &x.first
	if n > 1 {
		a = &attempt{s: s, start: x.start}
		a.trace.GotConn = a.gotConn
		a.trace.WroteRequest = a.wroteRequest
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), &a.trace))
	}
	a.gates = gates
	resp, err := s.transport.RoundTrip(req)
	if err == nil {
		s.watchBody(resp)
	}
	if err != nil && neverSent(err) {
		s.cancelGates(gates)
	} else {
		a.settleIfOpen() // written, or perhaps partly: now is a safe upper bound
	}
	if at := a.sentAt.Load(); at != 0 {
		return x.start.Add(time.Duration(at)), resp, err // keeps the monotonic reading
	}
	return time.Now(), resp, err
}

// attempt is one sending of a request: its gates, and when it was written.
// Each attempt has its own, as a late callback of an earlier attempt may
// still settle that attempt's gates.
type attempt struct {
	s      *Server
	gates  []*gate
	start  time.Time    // the exchange's start
	sentAt atomic.Int64 // time written, since start; 0 until then
	trace  httptrace.ClientTrace
	conn   atomic.Pointer[sentConn] // the upstream connection, once known
}

// gotConn notes the connection the request goes on (a new one when
// net/http retries it).
func (a *attempt) gotConn(info httptrace.GotConnInfo) { a.conn.Store(findSentConn(info.Conn)) }

// wroteRequest settles once the request's bytes have left the connection's
// buffer (see sentConn), or now on a connection that cannot tell. net/http
// calls it for every write of the request: a second one (a retry on a new
// connection) moves the send time later.
func (a *attempt) wroteRequest(httptrace.WroteRequestInfo) {
	if c := a.conn.Load(); c != nil {
		c.afterNextWrite(a.sent)
		return
	}
	a.sent(time.Now())
}

// sent records that the request left at at: it settles every gate of the
// attempt, or moves its send time later (see gate.settle).
func (a *attempt) sent(at time.Time) {
	d := max(int64(at.Sub(a.start)), 1)
	for {
		old := a.sentAt.Load()
		if old >= d || a.sentAt.CompareAndSwap(old, d) {
			break
		}
	}
	for _, g := range a.gates {
		g.settle(a.s, at)
	}
}

// settleIfOpen settles with the time now the gates no write settled: when
// the round trip is over, the request has left if it ever did.
func (a *attempt) settleIfOpen() {
	now := time.Now()
	a.sentAt.CompareAndSwap(0, max(int64(now.Sub(a.start)), 1))
	for _, g := range a.gates {
		g.settleOpen(a.s, now)
	}
}

func (s *Server) cancelGates(gates []*gate) {
	for _, g := range gates {
		g.cancel(s)
	}
}

// abandonProbes restarts the probes of gates whose request got no answer:
// the key stays closed and another request probes.
func (s *Server) abandonProbes(gates []*gate) {
	for _, g := range gates {
		if g.res.Probe {
			if err := s.storeCall(func(ctx context.Context) error { return s.store.Hold(ctx, g.key, 0) }); err != nil {
				s.log.Warn("restarting a probe failed", zap.Error(err))
			}
		}
	}
}

func (s *Server) endProbes(gates []*gate) {
	for _, g := range gates {
		if g.res.Probe {
			if err := s.storeCall(func(ctx context.Context) error { return s.store.EndProbe(ctx, g.res) }); err != nil {
				s.log.Warn("ending a probe failed", zap.Error(err))
			}
		}
	}
}

// inspect classifies the upstream's answer, teaches the store what it says
// about the quota, and returns the verdict, the wait it names (bounded; the
// upstream's default when it names none) and the bucket it reports.
func (s *Server) inspect(x *exchange, resp *http.Response, sentAt time.Time, route string) (signals.Verdict, time.Duration, string) {
	up := x.up
	th := &up.throttle
	var body []byte
	if th.candidates[resp.StatusCode] || len(th.rules.BodyFields) > 0 && smallJSON(resp) {
		body = peekBody(resp)
	}
	verdict := signals.Classify(th.rules, resp.StatusCode, resp.Header, body)
	now := time.Now()
	bucket := ""
	if !up.learn.off && verdict.Kind != signals.KindOverload && verdict.Kind != signals.KindNotQuota {
		var o quota.Observation
		var key string
		bucket, o, key = s.observe(x, resp, now, sentAt, route)
		if verdict.Throttle && o.Limit > 0 && o.Remaining >= 0 {
			s.tuneMargin(x, key, o, now)
		}
	}
	if !verdict.Throttle {
		return verdict, 0, bucket
	}
	wait, _, ok := signals.Wait(resp.Header, body, now, th.bounds)
	if !ok {
		wait = th.defaultWait
	}
	return verdict, wait, bucket
}

// observe turns the quota windows in the headers into an Observation for
// the credential's key, or the bucket's key when the upstream names one,
// and returns that bucket, the observation and the key. now is when the
// answer arrived.
func (s *Server) observe(x *exchange, resp *http.Response, now, sentAt time.Time, route string) (string, quota.Observation, string) {
	windows := signals.Quota(resp.Header, now)
	if len(windows) == 0 {
		return "", quota.Observation{}, ""
	}
	if route == "" && resp.Request != nil {
		route = resp.Request.Method + " " + resp.Request.URL.Path
	}
	up := x.up
	bucket := ""
	o := quota.Observation{SentAt: sentAt, Remaining: -1, Replace: up.learn.replace, Reserve: up.learn.threshold}
	best := math.MaxInt64
	for _, w := range windows {
		if w.Bucket != "" {
			bucket = w.Bucket
		}
		if w.Refill {
			continue // time to full, not a window: no budget, no limit
		}
		if w.Limit > 0 && w.Period > 0 && w.Limit <= quota.MaxLimitCount {
			o.Limits = append(o.Limits, quota.Limit{Count: int(w.Limit), Window: w.Period + up.marginFor(w.Period, up.tuner.current(now))})
			o.KeepFor = max(o.KeepFor, 2*w.Period, time.Minute)
		}
		if w.Remaining < 0 || w.Reset <= 0 || w.Remaining > quota.MaxLimitCount || w.Limit > quota.MaxLimitCount {
			continue
		}
		// The window with the least left binds first.
		if left := int(w.Remaining); left < best {
			best = left
			o.Remaining, o.ResetAt, o.Limit, o.Period = left, now.Add(w.Reset), int(w.Limit), w.Period
			if w.Period > 0 {
				o.Delay = up.marginFor(w.Period, up.tuner.current(now))
			}
		}
	}
	key := x.id.key
	if bucket != "" {
		up.buckets.set(route, bucket)
		key = x.id.key + "#" + bucket
	}
	if o.Remaining >= 0 || len(o.Limits) > 0 {
		ctx, cancel := s.storeContext(context.Background())
		defer cancel()
		if err := s.store.Observe(ctx, key, o); err != nil {
			s.log.Warn("recording the upstream's quota failed", zap.String("key", x.id.fingerprint), zap.Error(err))
		}
	}
	return bucket, o, key
}

// tuneMargin widens the upstream's window margin after an unpredicted
// throttle (see marginTuner): the vendor throttled although it reports
// having counted no more than the proxy sent in its window.
func (s *Server) tuneMargin(x *exchange, key string, o quota.Observation, now time.Time) {
	in, ok := s.store.(quota.Inspector)
	if !ok || o.Period <= 0 {
		return
	}
	up := x.up
	var limits []quota.Limit
	if key == x.id.key && x.id.limits != nil {
		limits = x.id.limits.enforced()
	}
	var st quota.KeyState
	err := s.storeCall(func(ctx context.Context) (err error) { st, err = in.Inspect(ctx, key, limits); return err })
	if err != nil {
		return
	}
	// What the proxy sent in the vendor's window: the enforced limit of
	// that window (learned from its report, or configured).
	ours, inForce := -1, time.Duration(0)
	for _, ls := range st.Limits {
		if ls.Limit.Count == o.Limit && ls.Limit.Window >= o.Period && ls.Limit.Window <= o.Period+o.Period/4 {
			ours, inForce = max(ours, ls.Used), ls.Limit.Window-o.Period
		}
	}
	if ours < 0 || o.Limit-o.Remaining > ours+1 {
		return // nothing to compare, or another caller spends the key
	}
	if to, changed := up.tuner.widen(now, inForce, o.Period/4, o.Period); changed {
		s.shareMargin(up)
		s.log.Info("window margin widened", zap.String("upstream", up.name), zap.Duration("window", o.Period),
			zap.Duration("from", inForce), zap.Duration("to", to), zap.String("reason", "a throttle the proxy's own count does not explain"))
	}
}

// smallJSON reports a JSON response of known length that fits in what
// Classify reads: only those are read ahead on success statuses, so that
// streaming responses are never held back.
func smallJSON(resp *http.Response) bool {
	if resp.ContentLength < 0 || resp.ContentLength > signals.MaxBody {
		return false
	}
	ct := resp.Header.Get("Content-Type")
	mt, _, _ := strings.Cut(ct, ";")
	mt = strings.ToLower(strings.TrimSpace(mt))
	return mt == "application/json" || strings.HasSuffix(mt, "+json")
}

// peekBody reads up to signals.MaxBody bytes of the body and puts them
// back in front of the rest.
func peekBody(resp *http.Response) []byte {
	if resp.Body == nil || resp.Body == http.NoBody {
		return nil
	}
	buf, err := io.ReadAll(io.LimitReader(resp.Body, signals.MaxBody))
	rest := resp.Body
	if err != nil && !errors.Is(err, io.EOF) {
		rest = io.NopCloser(errReader{err})
	}
	resp.Body = struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(buf), rest), resp.Body}
	return buf
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }
