package admin_test

import (
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/ratelimit-proxy/ratelimit-proxy/admin"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
)

func TestHealthzAndCA(t *testing.T) {
	pem := []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
	srv := newAdmin(t, admin.Options{Recorder: admin.NewRecorder(0), Store: quota.NewMemoryStore(nil), CACert: pem})
	if code, body, _ := fetch(t, srv.URL+"/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if code, body, h := fetch(t, srv.URL+"/ca.pem"); code != 200 || body != string(pem) || h.Get("Content-Type") != "application/x-pem-file" {
		t.Errorf("/ca.pem: %d %q %s", code, body, h.Get("Content-Type"))
	}
	noCA := newAdmin(t, admin.Options{Recorder: admin.NewRecorder(0), Store: quota.NewMemoryStore(nil)})
	if code, _, _ := fetch(t, noCA.URL+"/ca.pem"); code != 404 {
		t.Errorf("/ca.pem without a CA: %d, want 404", code)
	}
	if code, _, _ := fetch(t, srv.URL+"/nothing-here"); code != 404 {
		t.Errorf("an unknown path: %d, want 404 (not the status page)", code)
	}
}

func TestReadyzChecksTheConfigAndTheStore(t *testing.T) {
	tests := []struct {
		name     string
		store    quota.Store
		ready    func() error
		wantCode int
		want     string
	}{
		{"ready", quota.NewMemoryStore(nil), nil, 200, "ok\n"},
		{"config loaded", quota.NewMemoryStore(nil), func() error { return nil }, 200, "ok\n"},
		{"no config", quota.NewMemoryStore(nil), func() error { return errors.New("no configuration loaded") }, 503, "config: no configuration loaded\n"},
		{"store down", failingStore{}, nil, 503, "store: connection refused\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newAdmin(t, admin.Options{Recorder: admin.NewRecorder(0), Store: tt.store, Ready: tt.ready})
			if code, body, _ := fetch(t, srv.URL+"/readyz"); code != tt.wantCode || body != tt.want {
				t.Errorf("/readyz: %d %q, want %d %q", code, body, tt.wantCode, tt.want)
			}
		})
	}
}

func TestHandlerNeedsARecorderAndAStore(t *testing.T) {
	if _, err := admin.Handler(admin.Options{Store: quota.NewMemoryStore(nil)}); err == nil {
		t.Error("Handler without a Recorder succeeded")
	}
	if _, err := admin.Handler(admin.Options{Recorder: admin.NewRecorder(0)}); err == nil {
		t.Error("Handler without a Store succeeded")
	}
}

// TestStatusPageIsSelfContained: the page loads nothing from elsewhere,
// and its Content-Security-Policy lets it load nothing from elsewhere.
func TestStatusPageIsSelfContained(t *testing.T) {
	srv := newAdmin(t, admin.Options{Recorder: admin.NewRecorder(0), Store: quota.NewMemoryStore(nil)})
	code, body, h := fetch(t, srv.URL+"/")
	if code != 200 || !strings.HasPrefix(h.Get("Content-Type"), "text/html") {
		t.Fatalf("/: %d %s", code, h.Get("Content-Type"))
	}
	if refs := regexp.MustCompile(`(?i)(src|href)\s*=\s*["']?(https?:)?//`).FindAllString(body, -1); len(refs) > 0 {
		t.Errorf("the page refers to other origins: %v", refs)
	}
	if regexp.MustCompile(`(?i)<script[^>]+src|<link[^>]+stylesheet|@import|url\(`).MatchString(body) {
		t.Error("the page loads a script, style sheet or image of its own: it must be one document")
	}
	csp := h.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "connect-src 'self'", "script-src 'sha256-", "style-src 'sha256-"} {
		if !strings.Contains(csp, want) {
			t.Errorf("Content-Security-Policy %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "http") {
		t.Errorf("Content-Security-Policy %q allows more than the page's own script and style", csp)
	}
}
