package config

import (
	"fmt"
	"sort"
	"strings"
)

// Answer is what a vendor's own SDKs look for in a 429, added to the
// proxy's uniform answer (status 429, an integer Retry-After, and the IETF
// RateLimit and RateLimit-Policy headers when the key has limits). It
// applies to the proxy's own 429 and to every rewritten vendor throttle.
//
// Values are templates (see ParseTemplate) that may hold {retry_after}
// (the Retry-After value: whole seconds, at least 1), {retry_after_ms}
// (the exact wait in milliseconds, rounded up), {reset} (the Unix time in
// seconds at which the wait ends, rounded up) and {message} (the proxy's
// explanation).
type Answer struct {
	// Headers are set on every 429 of the upstream, replacing the
	// upstream's own of the same name. Over a profile, the names given
	// here replace the profile's and the others are kept; "" drops one.
	Headers map[string]string `yaml:"headers"`
	// Body is merged into the JSON body of the proxy's own 429 (a
	// rewritten throttle keeps the upstream's body): objects merge key by
	// key, other values replace. A string that is exactly {retry_after},
	// {retry_after_ms} or {reset} becomes that number. It may add to the
	// proxy's "error" object, not change its code, message,
	// retry_after_seconds or source. Over a profile, the top-level fields
	// given here replace the profile's.
	Body map[string]any `yaml:"body"`
}

// The placeholders of answer templates.
const (
	PlaceholderRetryAfter   = "retry_after"
	PlaceholderRetryAfterMs = "retry_after_ms"
	PlaceholderReset        = "reset"
	PlaceholderMessage      = "message"
)

var placeholders = []string{PlaceholderRetryAfter, PlaceholderRetryAfterMs, PlaceholderReset, PlaceholderMessage}

// TemplatePart is one piece of an answer template: literal Text, or, when
// Placeholder is set, the value it names.
type TemplatePart struct {
	Text        string
	Placeholder string
}

// ParseTemplate splits an answer template into literal text and
// placeholders written {name}. A brace that does not open a known
// placeholder is an error.
func ParseTemplate(s string) ([]TemplatePart, error) {
	var parts []TemplatePart
	for s != "" {
		i := strings.IndexAny(s, "{}")
		if i < 0 {
			parts = append(parts, TemplatePart{Text: s})
			break
		}
		if i > 0 {
			parts = append(parts, TemplatePart{Text: s[:i]})
		}
		if s[i] == '}' {
			return nil, fmt.Errorf("%q: a '}' without its '{'", s)
		}
		end := strings.IndexByte(s[i:], '}')
		if end < 0 {
			return nil, fmt.Errorf("%q: a '{' without its '}'", s)
		}
		name := s[i+1 : i+end]
		if !known(name) {
			return nil, fmt.Errorf("%q: unknown placeholder {%s} (known: {%s})", s, name, strings.Join(placeholders, "}, {"))
		}
		parts = append(parts, TemplatePart{Placeholder: name})
		s = s[i+end+1:]
	}
	return parts, nil
}

func known(name string) bool {
	for _, p := range placeholders {
		if p == name {
			return true
		}
	}
	return false
}

// reservedAnswerHeaders are the headers an answer may not set: the
// proxy's uniform answer, the body's framing, and hop-by-hop headers.
var reservedAnswerHeaders = map[string]bool{
	"retry-after": true, "ratelimit": true, "ratelimit-policy": true,
	"x-ratelimit-proxy-upstream-status": true,
	"content-type":                      true, "content-length": true, "content-encoding": true,
	"connection": true, "keep-alive": true, "proxy-connection": true, "te": true,
	"trailer": true, "transfer-encoding": true, "upgrade": true,
}

// proxyErrorFields are the fields of the proxy's "error" object that an
// answer body may not change.
var proxyErrorFields = map[string]bool{"code": true, "message": true, "retry_after_seconds": true, "source": true}

// check reports the first problem of the answer section at path p as the
// path of the field at fault and what is wrong.
func (a Answer) check(p string) (string, error) {
	names := make([]string, 0, len(a.Headers))
	for name := range a.Headers {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		hp := p + ".headers." + name
		switch {
		case !tokenRE.MatchString(name):
			return hp, fmt.Errorf("%q is not a valid header name", name)
		case reservedAnswerHeaders[strings.ToLower(name)]:
			return hp, fmt.Errorf("%s is set by the proxy itself", name)
		}
		v := a.Headers[name]
		if strings.ContainsFunc(v, func(r rune) bool { return r < ' ' && r != '\t' || r == 0x7f }) {
			return hp, fmt.Errorf("%q: control characters are not allowed in a header value", v)
		}
		if _, err := ParseTemplate(v); err != nil {
			return hp, err
		}
	}
	if e, ok := a.Body["error"]; ok {
		fields, isMap := e.(map[string]any)
		if !isMap {
			return p + ".body.error", fmt.Errorf("want a mapping: it adds to the proxy's error object")
		}
		for k := range fields {
			if proxyErrorFields[k] {
				return p + ".body.error." + k, fmt.Errorf("set by the proxy itself (its code, message, retry_after_seconds and source are the same for every vendor)")
			}
		}
	}
	return checkBody(p+".body", a.Body)
}

// checkBody checks every string of a body value as a template.
func checkBody(p string, v any) (string, error) {
	switch v := v.(type) {
	case string:
		if _, err := ParseTemplate(v); err != nil {
			return p, err
		}
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if path, err := checkBody(p+"."+k, v[k]); err != nil {
				return path, err
			}
		}
	case []any:
		for i, e := range v {
			if path, err := checkBody(fmt.Sprintf("%s[%d]", p, i), e); err != nil {
				return path, err
			}
		}
	case nil, bool, int, int64, uint64, float64:
	default:
		return p, fmt.Errorf("want a JSON value (mapping, list, string, number, true, false or null), not %T", v)
	}
	return "", nil
}
