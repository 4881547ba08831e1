package proxy

import (
	"net/url"
	"strings"
)

// Strict credential extraction. An identity rule must find in a request
// the very credential the upstream will read, or refuse the request: a
// rule that finds two different values (the header twice, the query
// parameter twice, the Authorization scheme twice) would key the request
// on one while both go upstream, and a query the proxy parses otherwise
// than the upstream might (';' separators, malformed escapes) would make
// it anonymous. The same value twice is one credential.

// credentialError refuses a request whose credential is ambiguous. It
// names the rule, never the credential.
type credentialError struct {
	rule string // the rule's label, "header:x-api-key"
	why  string
}

func (e *credentialError) Error() string { return "identity rule " + e.rule + " " + e.why }

const (
	whyTwoValues = "found two different values in this request: send the credential once"
	whySemicolon = "cannot read the query: it separates parameters with ';', which upstreams read differently (escape it as %3B)"
	whyEscape    = "cannot read the query parameter: it holds a malformed %-escape"
)

// oneValue collects the values a rule finds and reports whether they are
// all the same.
type oneValue struct {
	value string
	found bool
	twice bool // two different values
}

func (o *oneValue) add(v string) {
	v = strings.TrimSpace(v)
	switch {
	case !o.found:
		o.value, o.found = v, true
	case v != o.value:
		o.twice = true
	}
}

// headerCredential is the one value of a header's fields.
func headerCredential(values []string) (string, bool) {
	var o oneValue
	for _, v := range values {
		o.add(v)
	}
	return o.value, !o.twice
}

// authorizationCredential is the one credential of scheme in the
// Authorization fields. A field holding "SCHEME a, SCHEME b" holds two:
// an element starting with the scheme and a space starts a credential,
// which runs to the next such element (so "AWS4-HMAC-SHA256
// Credential=a, Signature=b" is one).
func authorizationCredential(values []string, scheme string) (string, bool) {
	var o oneValue
	for _, v := range values {
		start := -1 // where the current credential of scheme starts in v
		for i := 0; ; {
			end := len(v)
			if j := strings.IndexByte(v[i:], ','); j >= 0 {
				end = i + j
			}
			e := strings.TrimLeft(v[i:end], " \t")
			if n := len(scheme); len(e) >= n && strings.EqualFold(e[:n], scheme) && (len(e) == n || e[n] == ' ' || e[n] == '\t') {
				if start >= 0 {
					o.add(v[start : i-1])
				}
				start = end - len(e) + n
			}
			if end == len(v) {
				break
			}
			i = end + 1
		}
		if start >= 0 {
			o.add(v[start:])
		}
	}
	return o.value, !o.twice
}

// queryCredential is the one value of parameter name in the raw query.
// It is read with '&' separators, as Go and most servers read a query;
// when the query also holds ';', it is read again with ';' as a separator
// too, as some servers do, and the two readings must agree.
func queryCredential(raw, name string) (string, string) {
	v, why := queryValue(raw, name, "&")
	if why != "" || strings.IndexByte(raw, ';') < 0 {
		return v, why
	}
	if w, why := queryValue(raw, name, "&;"); why != "" || w != v {
		return "", whySemicolon
	}
	return v, ""
}

// queryValue reads parameter name in raw, split at any of seps. It
// returns why it cannot, if so.
func queryValue(raw, name, seps string) (string, string) {
	var o oneValue
	for raw != "" {
		var pair string
		if i := strings.IndexAny(raw, seps); i >= 0 {
			pair, raw = raw[:i], raw[i+1:]
		} else {
			pair, raw = raw, ""
		}
		k, v, _ := strings.Cut(pair, "=")
		if strings.ContainsAny(k, "%+") {
			key, err := url.QueryUnescape(k)
			if err != nil {
				if lenientUnescape(k) == name {
					return "", whyEscape
				}
				continue
			}
			k = key
		}
		if k != name {
			continue
		}
		if strings.ContainsAny(v, "%+") {
			val, err := url.QueryUnescape(v)
			if err != nil {
				return "", whyEscape
			}
			v = val
		}
		o.add(v)
	}
	if o.twice {
		return "", whyTwoValues
	}
	return o.value, ""
}

// lenientUnescape decodes the valid %-escapes and '+' of s and keeps the
// malformed ones as written, as a lenient server would.
func lenientUnescape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '+':
			b.WriteByte(' ')
		case c == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]):
			b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
			i += 2
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}
