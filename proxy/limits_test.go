package proxy

import (
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// TestLimitLogIsOneLinePerPeriod: a thousand refusals in a burst make one
// line at once and one line with the rest after limitLogEvery, each with
// the count it reports and the total; a quiet period lets the next event
// log at once again.
func TestLimitLogIsOneLinePerPeriod(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		core, logs := observer.New(zap.InfoLevel)
		l := newLimitLog(zap.New(core), "max_queued", 7, "refused")
		for range 1000 {
			l.hit()
		}
		if n := logs.Len(); n != 1 {
			t.Fatalf("%d lines after a burst, want 1", n)
		}
		time.Sleep(limitLogEvery)
		synctest.Wait()
		time.Sleep(2 * limitLogEvery)
		synctest.Wait()
		l.hit()
		l.stop()
		var got []string
		for _, e := range logs.All() {
			f := e.ContextMap()
			got = append(got, strings.Join([]string{e.Message, f["resource"].(string), itoa(f["limit"].(int64)), itoa(f["refused"].(int64)), itoa(f["refused_total"].(int64))}, " "))
		}
		want := []string{
			"resource limit reached max_queued 7 1 1",
			"resource limit reached max_queued 7 999 1000",
			"resource limit reached max_queued 7 1 1001",
		}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("lines:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	})
}
