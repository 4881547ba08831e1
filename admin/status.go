package admin

import (
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"net/http"
	"strings"
)

// The status page is one self-contained HTML document: its style and
// script are inlined, and its Content-Security-Policy allows those two
// and requests to this origin, nothing else, so it never loads anything
// from elsewhere.
//
//go:embed status/index.html status/status.css status/status.js
var statusFiles embed.FS

var statusHTML, statusCSP = buildStatusPage()

func buildStatusPage() ([]byte, string) {
	read := func(name string) string {
		b, err := statusFiles.ReadFile("status/" + name)
		if err != nil {
			panic(err) // embedded: cannot happen
		}
		return string(b)
	}
	css, js := read("status.css"), read("status.js")
	page := strings.NewReplacer("{{STYLE}}", css, "{{SCRIPT}}", js).Replace(read("index.html"))
	csp := "default-src 'none'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'" +
		"; style-src '" + digest(css) + "'; script-src '" + digest(js) + "'"
	return []byte(page), csp
}

// digest is a CSP source expression for an inline element's text.
func digest(s string) string {
	sum := sha256.Sum256([]byte(s))
	return "sha256-" + base64.StdEncoding.EncodeToString(sum[:])
}

func (a *endpoints) statusPage(w http.ResponseWriter, _ *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", statusCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.Write(statusHTML)
}
