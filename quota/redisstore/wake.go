package redisstore

import (
	"sync"
	"time"
)

// wakes hands out the Wake channels of reservations and closes them when
// the key's state changes on any replica: a script that wakes a key's
// waiters publishes the key's tag on the store's channel, and every
// replica closes its waiters' channels for that tag.
//
// A call registers its key before it runs (acquire) and hands out the
// registered channel after (handOut), so that a wake published while the
// answer travels back is not lost: the channel is closed already, and the
// waiter looks again at once.
type wakes struct {
	mu   sync.Mutex
	tags map[string]*wakeEntry
}

type wakeEntry struct {
	refs   int           // calls in flight on the key
	ch     chan struct{} // handed out to waiters; nil until then
	fired  bool
	handed time.Time
}

var closedChan = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

func newWakes() *wakes { return &wakes{tags: map[string]*wakeEntry{}} }

// acquire registers a call on tag.
func (w *wakes) acquire(tag string) *wakeEntry {
	w.mu.Lock()
	defer w.mu.Unlock()
	e := w.tags[tag]
	if e == nil {
		e = &wakeEntry{}
		w.tags[tag] = e
	}
	e.refs++
	return e
}

// done ends the call registered as e. woke reports that the call woke the
// key's waiters (they are woken here at once, before the published message
// arrives); wakeable that the call's reservation waits for a Wake, which
// is returned.
func (w *wakes) done(tag string, e *wakeEntry, woke, wakeable bool) <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	e.refs--
	var out chan struct{}
	if wakeable {
		if e.fired {
			out = closedChan
		} else {
			if e.ch == nil {
				e.ch = make(chan struct{})
			}
			e.handed = time.Now()
			out = e.ch
		}
	}
	if woke {
		w.fireLocked(tag, e)
	}
	if e.refs == 0 && e.ch == nil && w.tags[tag] == e {
		delete(w.tags, tag)
	}
	return out
}

// fire wakes the waiters of tag (a published message).
func (w *wakes) fire(tag string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if e := w.tags[tag]; e != nil {
		w.fireLocked(tag, e)
	}
}

// fireAll wakes every waiter: the subscription was lost, and messages with
// it.
func (w *wakes) fireAll() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for tag, e := range w.tags {
		w.fireLocked(tag, e)
	}
}

func (w *wakes) fireLocked(tag string, e *wakeEntry) {
	if !e.fired {
		e.fired = true
		if e.ch != nil {
			close(e.ch)
		}
	}
	if w.tags[tag] == e {
		delete(w.tags, tag) // calls after this get a fresh entry
	}
}

// sweep forgets channels handed out long ago: their waiters have looked
// again since (every wait is bounded) and hold newer ones.
func (w *wakes) sweep(olderThan time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for tag, e := range w.tags {
		if e.refs == 0 && e.ch != nil && time.Since(e.handed) > olderThan {
			w.fireLocked(tag, e)
		}
	}
}

func (w *wakes) len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.tags)
}
