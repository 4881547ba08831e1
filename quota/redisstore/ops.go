package redisstore

import (
	"context"
	"strings"
	"sync"
	"time"
)

// opQueue holds the settles and observations the store has accepted but
// not yet written to Redis, per key. They are applied in order: by the
// background flusher, batched in one pipeline for many keys, or carried by
// the next script call on the same key, which applies them before its own
// decision. At most one call carries a key's operations at a time, and a
// call waits until every operation queued before it began is applied, so
// the store reads its own writes; other replicas see a request not yet
// settled as on its way, which is the safe side.
type opQueue struct {
	mu     sync.Mutex
	keys   map[string]*pendingOps
	seq    uint64        // the last operation queued, over all keys
	kick   chan struct{} // wakes the flusher
	maxAge time.Duration
}

type pendingOps struct {
	ops      []string
	since    time.Time // when the oldest of ops was queued
	queued   uint64    // seq of the last op queued for the key
	applied  uint64    // seq of the last op applied (or dropped)
	carrying bool
	done     chan struct{} // closed when the carrier finishes
}

func newOpQueue(maxAge time.Duration) *opQueue {
	return &opQueue{keys: map[string]*pendingOps{}, kick: make(chan struct{}, 1), maxAge: maxAge}
}

// add queues op for key.
func (q *opQueue) add(key, op string) {
	q.mu.Lock()
	p := q.keys[key]
	if p == nil {
		p = &pendingOps{}
		q.keys[key] = p
	}
	if len(p.ops) == 0 {
		p.since = time.Now()
	}
	q.seq++
	p.ops = append(p.ops, op)
	p.queued = q.seq
	q.mu.Unlock()
	select {
	case q.kick <- struct{}{}:
	default:
	}
}

// carry returns the operations a call on key must apply first, and a
// function to call with the outcome. It waits (within ctx) while another
// call carries operations of the key that were queued before this call.
func (q *opQueue) carry(ctx context.Context, key string) (string, func(ok bool), error) {
	q.mu.Lock()
	p := q.keys[key]
	if p == nil {
		q.mu.Unlock()
		return "", nil, nil
	}
	need := p.queued
	for {
		if p.applied >= need {
			q.mu.Unlock()
			return "", nil, nil
		}
		if !p.carrying {
			ops, finish := q.takeLocked(key, p)
			q.mu.Unlock()
			return strings.Join(ops, "\n"), finish, nil
		}
		done := p.done
		q.mu.Unlock()
		select {
		case <-done:
		case <-ctx.Done():
			return "", nil, ctx.Err()
		}
		q.mu.Lock()
		if q.keys[key] != p {
			q.mu.Unlock() // everything queued before was applied
			return "", nil, nil
		}
	}
}

// takeLocked takes every queued operation of p for one call.
func (q *opQueue) takeLocked(key string, p *pendingOps) ([]string, func(ok bool)) {
	taken, upTo, since := p.ops, p.queued, p.since
	p.ops, p.carrying, p.done = nil, true, make(chan struct{})
	return taken, func(ok bool) {
		q.mu.Lock()
		defer q.mu.Unlock()
		p.carrying = false
		close(p.done)
		if ok || time.Since(since) > q.maxAge {
			// Applied, or given up: an unsettled request then counts as
			// on its way until the store's staleness bound.
			p.applied = max(p.applied, upTo)
		} else {
			p.ops = append(taken, p.ops...) // try again, in order
			p.since = since
		}
		if len(p.ops) == 0 && p.applied >= p.queued && q.keys[key] == p {
			delete(q.keys, key)
		}
	}
}

// batch takes the operations of every key no call is carrying, for the
// flusher.
func (q *opQueue) batch() (keys []string, ops [][]string, finish []func(bool)) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for key, p := range q.keys {
		if p.carrying || len(p.ops) == 0 {
			continue
		}
		o, f := q.takeLocked(key, p)
		keys, ops, finish = append(keys, key), append(ops, o), append(finish, f)
	}
	return keys, ops, finish
}

// pending counts the keys with operations not yet applied.
func (q *opQueue) pending() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.keys)
}
