// Package redisstore is a quota.Store kept in Redis (or Redis Cluster), so
// that every replica of the proxy sharing it shares each key's quota: its
// send times, queue, holds, probes, budgets and learned windows.
//
// Every decision is one call of a Lua function (FCALL of a library the
// store loads with FUNCTION LOAD, and loads again when Redis lost it; on a
// Redis before 7, a script run with EVALSHA) that makes the same steps as
// the memory store (quota/key.go) on the key's state in Redis, with the time read from Redis TIME inside the
// script, so replicas whose clocks disagree still share one timeline.
// Times the caller measures (when a request was sent, when the upstream's
// window resets) are converted with a measured bound on the local-to-Redis
// clock offset, on the safe side.
//
// The fast path is one synchronous round trip per admitted request
// (Reserve). Settle and Observe return at once: they are queued and
// written in the background, batched in pipelines, or carried by the next
// call on the same key; until then other replicas count the request as on
// its way, which is the safe side.
//
// A quota key is one Redis key, PREFIX:v3:{TAG}:m, where TAG is a hash of
// the quota key (a hash tag: Redis Cluster runs a call on the node that
// holds it) and v3 the schema version: a string of packed numbers (its
// scalars, queue, bucket logs, what the upstream taught, and last its
// latest send times), read with one GET and written with one SET by each
// call, with a TTL of the longest window plus a minute. PREFIX:schema names the schema of the replicas
// that use the Redis: a store refuses to run against another.
package redisstore

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
	"github.com/redis/go-redis/v9"
)

// Schema is the version of the key layout and of the scripts' meaning.
// Replicas of releases with the same Schema share a Redis (a rolling
// upgrade); a store refuses a Redis whose PREFIX:schema names another.
const Schema = "3"

// ErrSchema is returned when the Redis is used by replicas of another
// schema.
var ErrSchema = errors.New("redisstore: the Redis holds quota keys of another schema version")

// Options configure a Store.
type Options struct {
	// Client is the Redis (redis.NewClient) or Redis Cluster
	// (redis.NewClusterClient) connection. Required. Its options should
	// set ContextTimeoutEnabled, so that every call honours its context's
	// deadline (NewClient does).
	Client redis.UniversalClient
	// Prefix starts every key name. Default "rlp".
	Prefix string
	// Timeout bounds every call that has no earlier deadline, and the
	// background writes. Default 1s.
	Timeout time.Duration
	// Clock, when set, replaces Redis TIME: the caller passes its time to
	// every script. For tests (the conformance suite's fake clock); the
	// clocks of replicas sharing the store must then agree.
	Clock quota.Clock
}

// Store is a quota.Store and quota.Inspector in Redis. It is safe for
// concurrent use. Close it to stop its background work.
type Store struct {
	rdb     redis.UniversalClient
	prefix  string
	channel string
	timeout time.Duration
	tb      *timeBase
	ops     *opQueue
	wakes   *wakes

	readyMu sync.Mutex  // held by the one call that gets the store ready
	ready   atomic.Bool // the schema was checked and the clock offset measured

	scriptsOnly bool          // never load the library (tests of the scripts)
	functions   atomic.Bool   // the library is loaded: FCALL, not EVALSHA
	loadMu      sync.Mutex    // held while the library is loaded again
	loads       atomic.Uint64 // counts the loads after the first

	queue chan *queued // calls waiting for a sender
	stop  chan struct{}
	wg    sync.WaitGroup
	sub   *redis.PubSub
}

var (
	_ quota.Store        = (*Store)(nil)
	_ quota.Inspector    = (*Store)(nil)
	_ quota.MarginSharer = (*Store)(nil)
)

// New returns a Store on opts.Client. It checks the schema and measures
// the clock offset when Redis answers within ctx; when it does not, the
// store starts anyway and its calls fail until Redis is back (the proxy's
// fallback covers them). It fails at once on ErrSchema.
func New(ctx context.Context, opts Options) (*Store, error) {
	if opts.Client == nil {
		return nil, errors.New("redisstore: no Redis client")
	}
	prefix := opts.Prefix
	if prefix == "" {
		prefix = "rlp"
	}
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = time.Second
	}
	s := &Store{
		rdb:     opts.Client,
		prefix:  prefix,
		channel: prefix + ":v" + Schema + ":wake",
		timeout: timeout,
		tb:      &timeBase{clock: opts.Clock},
		ops:     newOpQueue(30 * time.Second),
		wakes:   newWakes(),
		queue:   make(chan *queued, 1024),
		stop:    make(chan struct{}),
	}
	if err := s.getReady(ctx); errors.Is(err, ErrSchema) {
		return nil, err
	}
	s.sub = s.rdb.Subscribe(context.Background(), s.channel)
	// Wait for the subscription when Redis answers, so that no wake
	// published after New returns is missed.
	rctx, cancel := context.WithTimeout(ctx, timeout)
	_, _ = s.sub.Receive(rctx)
	cancel()
	s.wg.Add(3 + senders)
	go s.listen()
	go s.flush()
	go s.maintain()
	for range senders {
		go s.sender()
	}
	return s, nil
}

// NewClient returns a client for a redis:// or rediss:// URL, or for a
// Redis Cluster when cluster lists node addresses (host:port), with the
// options the store needs: context deadlines honoured, a pool sized for a
// proxy.
func NewClient(url string, cluster []string) (redis.UniversalClient, error) {
	quietOnce.Do(func() { redis.SetLogger(quiet{}) })
	if len(cluster) > 0 {
		opts := &redis.ClusterOptions{Addrs: cluster}
		if url != "" {
			o, err := redis.ParseClusterURL(url)
			if err != nil {
				return nil, fmt.Errorf("redis cluster url: %w", err)
			}
			o.Addrs = append(o.Addrs, cluster...)
			opts = o
		}
		opts.ContextTimeoutEnabled = true
		opts.PoolSize = max(opts.PoolSize, 64)
		return redis.NewClusterClient(opts), nil
	}
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("redis url: %w", err)
	}
	opts.ContextTimeoutEnabled = true
	opts.PoolSize = max(opts.PoolSize, 64)
	return redis.NewClient(opts), nil
}

// quiet silences go-redis's own log (a line per failed dial, to standard
// error): while Redis is down the store's callers log the outage once.
type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

var quietOnce sync.Once

// Close stops the store's background work after a last attempt to write
// what it queued. It does not close the client.
func (s *Store) Close() error {
	select {
	case <-s.stop:
		return nil
	default:
	}
	close(s.stop)
	err := s.sub.Close()
	s.wg.Wait()
	return err
}

// errNotReady is returned while another call tries to reach Redis for
// the first time (or again, after a schema conflict).
var errNotReady = errors.New("redisstore: Redis has not answered yet")

// getReady checks the schema marker and measures the clock offset, once.
// One call tries at a time; the others fail at once instead of queueing
// behind it.
func (s *Store) getReady(ctx context.Context) error {
	if s.ready.Load() {
		return nil
	}
	if !s.readyMu.TryLock() {
		return errNotReady
	}
	defer s.readyMu.Unlock()
	if s.ready.Load() {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.checkSchema(ctx); err != nil {
		return err
	}
	if err := s.chooseFunctions(ctx); err != nil {
		return err
	}
	if err := s.tb.measure(ctx, s.rdb); err != nil {
		return fmt.Errorf("redisstore: reading the Redis clock: %w", err)
	}
	s.ready.Store(true)
	return nil
}

// checkSchema claims PREFIX:schema for this schema, or finds it claimed
// by another. The marker lives 30 days past the last replica that saw it.
func (s *Store) checkSchema(ctx context.Context) error {
	key := s.prefix + ":schema"
	pipe := s.rdb.Pipeline()
	pipe.SetNX(ctx, key, Schema, 0)
	get := pipe.Get(ctx, key)
	pipe.Expire(ctx, key, 30*24*time.Hour)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("redisstore: %w", err)
	}
	if v := get.Val(); v != Schema {
		return fmt.Errorf("%w: %s is %q, this release uses schema %q under prefix %q; finish the upgrade on another prefix or Redis database, or roll back",
			ErrSchema, key, v, Schema, s.prefix)
	}
	return nil
}

// tag names key in Redis: a hash, so that no quota key (nor a character
// in it that would break the hash tag) appears in Redis.
func tag(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:16])
}

func (s *Store) keys(t string) []string {
	return []string{s.prefix + ":v" + Schema + ":{" + t + "}:m"}
}

// call runs a script on key after the operations queued for it, within
// ctx and the store's timeout. The first result, for wakeable calls, is
// the Wake channel to hand out when wakeable says so.
func (s *Store) call(ctx context.Context, e entry, key string, wakeable func([]int64) (bool, bool), args ...any) ([]int64, <-chan struct{}, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.getReady(ctx); err != nil {
		return nil, nil, err
	}
	t := tag(key)
	entry := s.wakes.acquire(t)
	ops, finish, err := s.ops.carry(ctx, key)
	if err != nil {
		s.wakes.done(t, entry, false, false)
		return nil, nil, err
	}
	argv := make([]any, 0, 2+len(args))
	argv = append(argv, s.tb.nowArg(), ops)
	argv = append(argv, args...)
	var after func(error)
	if finish != nil {
		after = func(err error) { finish(err == nil) }
	}
	res, err := int64s(s.send(ctx, e, s.keys(t), argv, after))
	if err != nil {
		s.wakes.done(t, entry, false, false)
		return nil, nil, fmt.Errorf("redisstore: %w", err)
	}
	woke, wait := wakeable(res)
	return res, s.wakes.done(t, entry, woke, wait), nil
}

// int64s reads an answer: numbers, or numbers packed as big-endian
// doubles in one string (the answers of the hot paths).
func int64s(cmd *redis.Cmd) ([]int64, error) {
	v, err := cmd.Result()
	if err != nil {
		return nil, err
	}
	b, ok := v.(string)
	if !ok {
		return cmd.Int64Slice()
	}
	if len(b)%8 != 0 {
		return nil, fmt.Errorf("an answer of %d bytes is not packed numbers", len(b))
	}
	out := make([]int64, len(b)/8)
	for i := range out {
		out[i] = int64(math.Float64frombits(binary.BigEndian.Uint64([]byte(b[8*i : 8*i+8]))))
	}
	return out, nil
}

// lastWoke reads the "woke" flag scripts return last.
func lastWoke(res []int64) (bool, bool) { return len(res) > 0 && res[len(res)-1] == 1, false }

func formatLimits(ls []quota.Limit) string {
	var b strings.Builder
	for i, l := range ls {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(strconv.Itoa(l.Count))
		b.WriteByte(' ')
		b.WriteString(strconv.FormatInt(durMicro(l.Window), 10))
	}
	return b.String()
}

// limitFor names the limit the script reported: one of ls when it matches
// (the caller's own values), else as Redis holds it (a learned window).
func limitFor(ls []quota.Limit, count, window int64) quota.Limit {
	if count == 0 {
		return quota.Limit{}
	}
	for _, l := range ls {
		if int64(l.Count) == count && durMicro(l.Window) == window {
			return l
		}
	}
	return quota.Limit{Count: int(count), Window: time.Duration(window) * time.Microsecond}
}

// Reserve implements quota.Store: one script, one round trip.
func (s *Store) Reserve(ctx context.Context, req quota.Request) (quota.Reservation, error) {
	if req.Key == "" {
		return quota.Reservation{}, quota.ErrNoKey
	}
	scout := "0"
	if req.Scout {
		scout = "1"
	}
	res, wake, err := s.call(ctx, lib.reserve, req.Key, func(v []int64) (bool, bool) { return v[12] == 1, v[11] == 1 },
		formatLimits(req.Limits), floorMicro(int64(req.MaxWait)), req.MaxQueue, scout,
		durMicro(req.Book.Round), durMicro(req.Book.Grace), durMicro(req.Book.Early), durMicro(req.Transit))
	if err != nil {
		return quota.Reservation{}, err
	}
	if len(res) != 13 {
		return quota.Reservation{}, fmt.Errorf("redisstore: reserve answered %d values", len(res))
	}
	r := quota.Reservation{
		OK:        res[0] == 1,
		Now:       micro(res[1]),
		At:        micro(res[2]),
		Binding:   limitFor(req.Limits, res[5], res[6]),
		QueueFull: res[7] == 1,
		Held:      res[8] == 1,
		Probe:     res[9] == 1,
		Booked:    res[10] == 1,
		Wake:      wake,
		Key:       req.Key,
		Limits:    req.Limits,
		Scout:     req.Scout,
	}
	if r.OK {
		r.Slot, r.ID = micro(res[3]), uint64(res[4])
	}
	return r, nil
}

// Release implements quota.Store.
func (s *Store) Release(ctx context.Context, r quota.Reservation) (quota.Reservation, error) {
	if !r.OK || r.ID == 0 {
		return r, nil
	}
	scout := "0"
	if r.Scout {
		scout = "1"
	}
	res, wake, err := s.call(ctx, lib.release, r.Key, func(v []int64) (bool, bool) { return v[9] == 1, v[8] == 1 },
		formatLimits(r.Limits), r.Slot.UnixMicro(), r.ID, scout)
	if err != nil {
		return r, err
	}
	if len(res) != 10 {
		return r, fmt.Errorf("redisstore: release answered %d values", len(res))
	}
	r.Now, r.At, r.Wake = micro(res[1]), micro(res[2]), wake
	if res[0] == 0 {
		return r, nil // forgotten or released already: nothing holds it back
	}
	r.Slot = micro(res[3])
	r.Binding = limitFor(r.Limits, res[4], res[5])
	r.Held = res[6] == 1
	if res[2] <= res[1] {
		r.Binding = quota.Limit{}
		r.Probe = res[7] == 1
	}
	return r, nil
}

// Settle implements quota.Store. It returns at once: the send is queued
// and written in the background (or by the next call on the key); until
// then the request counts as on its way. The send time is converted to
// the latest store time it can be, and never before the request's slot.
func (s *Store) Settle(_ context.Context, r quota.Reservation, sentAt time.Time) (quota.Reservation, error) {
	if !r.OK || r.ID == 0 {
		return r, nil
	}
	if !s.tb.ready() {
		return r, errNotReady
	}
	x := min(s.tb.late(sentAt), s.tb.nowLate())
	if !r.Sent.IsZero() {
		// Written again (a retry on a new connection): keep the latest.
		if prev := r.Sent.UnixMicro(); x > prev {
			s.ops.add(r.Key, "M "+strconv.FormatInt(prev, 10)+" "+strconv.FormatInt(x, 10))
			r.Sent = micro(x)
		}
		return r, nil
	}
	x = max(x, r.Slot.UnixMicro())
	s.ops.add(r.Key, "S "+strconv.FormatInt(r.Slot.UnixMicro(), 10)+" "+strconv.FormatUint(r.ID, 10)+" "+strconv.FormatInt(x, 10))
	r.Sent = micro(x)
	return r, nil
}

// Cancel implements quota.Store.
func (s *Store) Cancel(ctx context.Context, r quota.Reservation) error {
	if !r.OK || r.ID == 0 {
		return nil
	}
	_, _, err := s.call(ctx, lib.cancel, r.Key, lastWoke, r.Slot.UnixMicro(), r.ID)
	return err
}

// Hold implements quota.Store. The hold is shared: every replica's
// requests of key wait for it.
func (s *Store) Hold(ctx context.Context, key string, d time.Duration) error {
	if key == "" {
		return quota.ErrNoKey
	}
	_, _, err := s.call(ctx, lib.hold, key, lastWoke, durMicro(d))
	return err
}

// EndProbe implements quota.Store.
func (s *Store) EndProbe(ctx context.Context, r quota.Reservation) error {
	if !r.Probe {
		return nil
	}
	_, _, err := s.call(ctx, lib.endProbe, r.Key, lastWoke, r.ID)
	return err
}

// Observe implements quota.Store. Like Settle it returns at once and is
// applied in order with the key's other writes. SentAt is converted to the
// earliest store time it can be and ResetAt to the latest, so that the
// budget errs low.
func (s *Store) Observe(_ context.Context, key string, o quota.Observation) error {
	if key == "" {
		return quota.ErrNoKey
	}
	if !s.tb.ready() {
		return errNotReady
	}
	var b strings.Builder
	resetAt := int64(0)
	if !o.ResetAt.IsZero() {
		resetAt = s.tb.late(o.ResetAt)
	}
	replace := 0
	if o.Replace {
		replace = 1
	}
	fmt.Fprintf(&b, "O %d %d %d %d %d %s %d %d %d", s.tb.early(o.SentAt), o.Limit, o.Remaining, resetAt,
		durMicro(o.Period), strconv.FormatFloat(o.Reserve, 'g', -1, 64), durMicro(o.KeepFor), replace, durMicro(o.Delay))
	if len(o.Limits) > 0 {
		b.WriteByte(' ')
		b.WriteString(formatLimits(o.Limits))
	}
	s.ops.add(key, b.String())
	return nil
}

// Flush writes what the store queued (settles, observations) and returns
// when it is written or ctx ends.
func (s *Store) Flush(ctx context.Context) error {
	for s.ops.pending() > 0 {
		s.flushOnce()
		if s.ops.pending() == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
	return nil
}

// KeyNames returns the names of the Redis keys that hold key (for
// operators and benchmarks: MEMORY USAGE, TTL).
func (s *Store) KeyNames(key string) []string { return s.keys(tag(key)) }

// Client returns the store's Redis client.
func (s *Store) Client() redis.UniversalClient { return s.rdb }

// shareMarginScript keeps the margin set latest: KEYS[1] holds
// "NANOSECONDS SETAT_UNIXNANO"; ARGV are the new pair and the TTL in ms.
var shareMarginScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur then
  local at = tonumber(string.match(cur, ' (%d+)$'))
  if at and at >= tonumber(ARGV[2]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2], 'PX', ARGV[3])
return 1`)

// marginTTL is how long a shared margin outlives its last setting.
const marginTTL = 24 * time.Hour

func (s *Store) marginKey(upstream string) string {
	return s.prefix + ":v" + Schema + ":margin:{" + tag(upstream) + "}"
}

// ShareMargin implements quota.MarginSharer: the margin set latest wins.
func (s *Store) ShareMargin(ctx context.Context, upstream string, margin time.Duration, setAt time.Time) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	err := shareMarginScript.Run(ctx, s.rdb, []string{s.marginKey(upstream)},
		int64(margin), setAt.UnixNano(), marginTTL.Milliseconds()).Err()
	if err != nil {
		return fmt.Errorf("redisstore: %w", err)
	}
	return nil
}

// SharedMargin implements quota.MarginSharer.
func (s *Store) SharedMargin(ctx context.Context, upstream string) (time.Duration, time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	v, err := s.rdb.Get(ctx, s.marginKey(upstream)).Result()
	if errors.Is(err, redis.Nil) {
		return 0, time.Time{}, nil
	}
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("redisstore: %w", err)
	}
	d, at, ok := strings.Cut(v, " ")
	nd, err1 := strconv.ParseInt(d, 10, 64)
	nat, err2 := strconv.ParseInt(at, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		return 0, time.Time{}, fmt.Errorf("redisstore: margin of %s: %q is not NANOSECONDS SETAT", upstream, v)
	}
	return time.Duration(nd), time.Unix(0, nat), nil
}

// Ping reports whether Redis answers (and the store is ready to use it).
func (s *Store) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.getReady(ctx); err != nil {
		return err
	}
	return s.rdb.Ping(ctx).Err()
}

// Record adds sends made while Redis was unreachable (by another store:
// the proxy's local fallback) to key, as Settle adds one: queued and
// written in the background, before any later call on the key. The key
// keeps enough history for limits. Times are converted as Settle's are.
func (s *Store) Record(key string, limits []quota.Limit, sent []time.Time) error {
	if key == "" {
		return quota.ErrNoKey
	}
	if !s.tb.ready() {
		return errNotReady
	}
	if len(sent) == 0 {
		return nil
	}
	s.ops.add(key, "L "+formatLimits(limits))
	now := s.tb.nowLate()
	for i := 0; i < len(sent); i += 512 {
		var b strings.Builder
		b.WriteString("A")
		for _, t := range sent[i:min(i+512, len(sent))] {
			b.WriteByte(' ')
			b.WriteString(strconv.FormatInt(min(s.tb.late(t), now), 10))
		}
		s.ops.add(key, b.String())
	}
	return nil
}

// Inspect implements quota.Inspector.
func (s *Store) Inspect(ctx context.Context, key string, limits []quota.Limit) (quota.KeyState, error) {
	if key == "" {
		return quota.KeyState{}, quota.ErrNoKey
	}
	res, _, err := s.call(ctx, lib.inspect, key, func([]int64) (bool, bool) { return false, false }, formatLimits(limits))
	if err != nil {
		return quota.KeyState{}, err
	}
	if len(res) < 2 {
		return quota.KeyState{}, fmt.Errorf("redisstore: inspect answered %d values", len(res))
	}
	now := micro(res[1])
	st := quota.KeyState{Now: now}
	if res[0] == 0 {
		for _, l := range limits {
			st.Limits = append(st.Limits, quota.LimitState{Limit: l, NextFree: now})
		}
		return st, nil
	}
	st.Queued, st.InFlight = int(res[2]), int(res[3])
	if res[4] != 0 {
		st.HoldUntil = micro(res[4])
	}
	st.Probing = res[5] == 1
	if res[7] != 0 {
		st.Budget, st.BudgetUntil = int(res[6]), micro(res[7])
	}
	i := 10
	n := int(res[9])
	for range n {
		st.Limits = append(st.Limits, quota.LimitState{
			Limit:    limitFor(limits, res[i], res[i+1]),
			Used:     int(res[i+2]),
			NextFree: micro(res[i+3]),
		})
		i += 4
	}
	m := int(res[i])
	i++
	for range m {
		st.Learned = append(st.Learned, limitFor(nil, res[i], res[i+1]))
		i += 2
	}
	if m > 0 {
		st.LearnedUntil = micro(res[8])
	}
	if i < len(res) {
		st.Booked = int(res[i])
	}
	return st, nil
}

// listen closes the Wake channels of keys other replicas (and this one)
// woke.
func (s *Store) listen() {
	defer s.wg.Done()
	ch := s.sub.Channel(redis.WithChannelHealthCheckInterval(10 * time.Second))
	for {
		select {
		case <-s.stop:
			return
		case m, ok := <-ch:
			if !ok {
				return
			}
			s.wakes.fire(m.Payload)
		}
	}
}

// flush writes queued operations in the background: every key's in one
// pipeline, as soon as the previous pipeline is done.
func (s *Store) flush() {
	defer s.wg.Done()
	for {
		select {
		case <-s.stop:
			s.flushOnce() // a last attempt
			return
		case <-s.ops.kick:
		}
		s.flushOnce()
	}
}

// applyBatch is how many keys one background write carries at most.
const applyBatch = 200

func (s *Store) flushOnce() {
	keys, ops, finish := s.ops.batch()
	if len(keys) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	if err := s.getReady(ctx); err != nil {
		for _, f := range finish {
			f(false)
		}
		return
	}
	now := s.tb.nowArg()
	// A key with only settles queued gets them appended (settle.lua), to
	// be applied by the next call that loads it; the others' operations
	// are applied (applymany.lua). On a cluster each key is one call.
	ws := make([]write, len(keys))
	for i, key := range keys {
		ws[i] = write{tag: tag(key), finish: finish[i]}
		if recs, ok := settleRecords(ops[i]); ok {
			ws[i].e, ws[i].arg = lib.settle, recs
		} else {
			ws[i].e, ws[i].arg = lib.applyMany, strings.Join(ops[i], "\n")
		}
	}
	if _, single := s.rdb.(*redis.Client); single {
		// One call for many keys: on a single Redis they may meet.
		for _, e := range []entry{lib.settle, lib.applyMany} {
			var group []write
			for _, w := range ws {
				if w.e.fn == e.fn {
					group = append(group, w)
				}
			}
			for lo := 0; lo < len(group); lo += applyBatch {
				batch := group[lo:min(lo+applyBatch, len(group))]
				names := make([]string, 0, len(batch))
				args := make([]any, 0, 2+len(batch))
				args = append(args, now, "")
				for _, w := range batch {
					names = append(names, s.keys(w.tag)...)
					args = append(args, w.arg)
				}
				v, err := s.run(ctx, e, names, args...).Int64Slice()
				for i, w := range batch {
					if err == nil && i < len(v) && v[i] == 1 {
						s.wakes.fire(w.tag)
					}
					w.finish(err == nil)
				}
			}
		}
	} else {
		pipe := s.rdb.Pipeline()
		cmds := make([]*redis.Cmd, len(ws))
		functions := s.functions.Load()
		for i, w := range ws {
			if functions {
				cmds[i] = pipe.FCall(ctx, w.e.fn, s.keys(w.tag), now, "", w.arg)
			} else {
				cmds[i] = w.e.script.EvalSha(ctx, pipe, s.keys(w.tag), now, "", w.arg)
			}
		}
		_, _ = pipe.Exec(ctx)
		for i, cmd := range cmds {
			w := ws[i]
			if err := cmd.Err(); functionMissing(err) || redis.HasErrorPrefix(err, "NOSCRIPT") {
				cmd = s.run(ctx, w.e, s.keys(w.tag), now, "", w.arg)
			}
			v, err := cmd.Int64Slice()
			if err == nil && len(v) > 0 && v[0] == 1 {
				s.wakes.fire(w.tag)
			}
			w.finish(err == nil)
		}
	}
	if s.ops.pending() > 0 {
		select {
		case s.ops.kick <- struct{}{}:
		default:
		}
	}
}

// write is what the flusher writes for one key: its operations applied
// (applymany.lua), or its settles appended (settle.lua).
type write struct {
	tag    string
	e      entry
	arg    string
	finish func(bool)
}

// settleRecords packs ops as settle.lua's records (big-endian doubles:
// kind, then SLOT ID X for a settle, PREV 0 X for a later one) when every
// one of them is a settle.
func settleRecords(ops []string) (string, bool) {
	b := make([]byte, 0, 32*len(ops))
	for _, op := range ops {
		f := strings.Fields(op)
		var v [4]int64
		switch {
		case len(f) == 4 && f[0] == "S":
			v[0] = 1
		case len(f) == 3 && f[0] == "M":
			v[0], f = 2, []string{f[0], f[1], "0", f[2]}
		default:
			return "", false
		}
		for j := 1; j < 4; j++ {
			n, err := strconv.ParseInt(f[j], 10, 64)
			if err != nil {
				return "", false
			}
			v[j] = n
		}
		for _, x := range v {
			b = binary.BigEndian.AppendUint64(b, math.Float64bits(float64(x)))
		}
	}
	return string(b), true
}

// maintain refreshes the clock offset and the schema marker, and forgets
// old Wake channels.
func (s *Store) maintain() {
	defer s.wg.Done()
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-tick.C:
		}
		if s.ops.pending() > 0 {
			select { // writes that failed: try again
			case s.ops.kick <- struct{}{}:
			default:
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
		if s.ready.Load() {
			err := s.checkSchema(ctx)
			if errors.Is(err, ErrSchema) {
				s.ready.Store(false) // every call fails with it until it is resolved
			} else if err == nil {
				_ = s.tb.measure(ctx, s.rdb)
			}
		} else {
			_ = s.getReady(ctx)
		}
		cancel()
		s.wakes.sweep(10 * time.Minute)
	}
}
