package redisstore

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"
)

// Decisions that wait at the same moment share a round trip: a few senders
// each take every call queued when they are free and send them to Redis as
// one pipeline. A lone call goes at once, alone; under load many calls
// share the system calls of one round trip, on both sides, and Redis reads
// and answers them together. Each call is still its own FCALL, run by Redis
// in the order the pipeline holds them.
const (
	senders  = 4   // round trips in flight at once
	maxBatch = 128 // calls in one
)

// queued is a call waiting for a sender.
type queued struct {
	ctx  context.Context
	e    entry
	keys []string
	args []any
	// after runs once the call is answered or given up, whether or not
	// its caller still waits: with the call's error.
	after func(error)
	cmd   *redis.Cmd
	done  chan struct{}
}

var errClosed = errors.New("redisstore: the store is closed")

// send runs e on keys through a sender and returns its answer, or ctx's
// error when ctx ends first. A call whose ctx ended before a sender took
// it is never sent.
func (s *Store) send(ctx context.Context, e entry, keys []string, args []any, after func(error)) *redis.Cmd {
	q := &queued{ctx: ctx, e: e, keys: keys, args: args, after: after, done: make(chan struct{})}
	select {
	case s.queue <- q:
	case <-ctx.Done():
		return q.give(ctx.Err())
	case <-s.stop:
		return q.give(errClosed)
	}
	select {
	case <-q.done:
		return q.cmd
	case <-ctx.Done():
		return redis.NewCmdResult(nil, ctx.Err())
	}
}

// give ends q, unsent, with err.
func (q *queued) give(err error) *redis.Cmd {
	q.cmd = redis.NewCmdResult(nil, err)
	q.end()
	return q.cmd
}

func (q *queued) end() {
	if q.after != nil {
		q.after(q.cmd.Err())
	}
	close(q.done)
}

// sender sends the queued calls, as many as are queued when it is free.
func (s *Store) sender() {
	defer s.wg.Done()
	batch := make([]*queued, 0, maxBatch)
	for {
		select {
		case q := <-s.queue:
			batch = append(batch[:0], q)
		case <-s.stop:
			for {
				select {
				case q := <-s.queue:
					q.give(errClosed)
				default:
					return
				}
			}
		}
	fill:
		for len(batch) < maxBatch {
			select {
			case q := <-s.queue:
				batch = append(batch, q)
			default:
				break fill
			}
		}
		s.sendBatch(batch)
	}
}

// sendBatch sends the calls of batch whose callers still wait, in one
// pipeline within the latest of their deadlines.
func (s *Store) sendBatch(batch []*queued) {
	live := batch[:0]
	var deadline time.Time
	for _, q := range batch {
		if err := q.ctx.Err(); err != nil {
			q.give(err)
			continue
		}
		live = append(live, q)
		if d, ok := q.ctx.Deadline(); !ok {
			deadline = time.Now().Add(s.timeout)
		} else if d.After(deadline) {
			deadline = d
		}
	}
	switch len(live) {
	case 0:
		return
	case 1:
		q := live[0]
		q.cmd = s.run(q.ctx, q.e, q.keys, q.args...)
		q.end()
		return
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	pipe := s.rdb.Pipeline()
	functions := s.functions.Load()
	for _, q := range live {
		if functions {
			q.cmd = pipe.FCall(ctx, q.e.fn, q.keys, q.args...)
		} else {
			q.cmd = q.e.script.EvalSha(ctx, pipe, q.keys, q.args...)
		}
	}
	_, _ = pipe.Exec(ctx)
	for _, q := range live {
		if err := q.cmd.Err(); functionMissing(err) || redis.HasErrorPrefix(err, "NOSCRIPT") {
			q.cmd = s.run(ctx, q.e, q.keys, q.args...) // loads what Redis lost
		}
		q.end()
	}
}
