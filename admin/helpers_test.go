package admin_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/ratelimit-proxy/ratelimit-proxy/admin"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota/storetest"
)

// newFakeClock is a store clock that moves only when told, at a fixed
// date.
func newFakeClock() *storetest.FakeClock {
	c := storetest.NewFakeClock()
	c.Set(time.Date(2026, 11, 24, 6, 0, 0, 0, time.UTC))
	return c
}

// newAdmin serves the admin endpoints of rec and store.
func newAdmin(t *testing.T, opts admin.Options) *httptest.Server {
	t.Helper()
	h, err := admin.Handler(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// fetch GETs url and returns the status, the body and the header.
func fetch(t *testing.T, url string) (int, string, http.Header) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(body), resp.Header
}

// scrape reads base's /metrics with the Prometheus text parser.
func scrape(t *testing.T, base string) map[string]*dto.MetricFamily {
	t.Helper()
	code, body, h := fetch(t, base+"/metrics")
	if code != 200 || !strings.HasPrefix(h.Get("Content-Type"), "text/plain") {
		t.Fatalf("/metrics: %d %s", code, h.Get("Content-Type"))
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v\n%s", err, body)
	}
	return fams
}

// sample finds the sample of family name whose labels are exactly
// labels ("k=v" pairs), and returns its value (a histogram's count).
func sample(fams map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
	want := strings.Join(labels, ",")
	for _, m := range f.GetMetric() {
		var got []string
		for _, lp := range m.GetLabel() {
			got = append(got, lp.GetName()+"="+lp.GetValue())
		}
		if strings.Join(got, ",") != want {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		case m.Untyped != nil:
			return m.GetUntyped().GetValue(), true
		}
	}
	return 0, false
}

// failingStore is a store whose every call fails.
type failingStore struct{ quota.Store }

var errDown = errors.New("connection refused")

func (failingStore) Inspect(context.Context, string, []quota.Limit) (quota.KeyState, error) {
	return quota.KeyState{}, errDown
}
