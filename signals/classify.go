package signals

import (
	"bytes"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// Kind says what sort of throttle a response is.
type Kind uint8

const (
	// KindNone is an ordinary response: not a throttle.
	KindNone Kind = iota
	// KindQuota is a rate limit or quota throttle: wait, retry, and learn
	// from it (the key's quota is spent for now).
	KindQuota
	// KindOverload is the upstream asking for a pause because it is busy
	// (529, or 503 with Retry-After and no rate-limit marker): wait and
	// retry, but learn nothing about the key's quota from it.
	KindOverload
	// KindNotQuota is a response that looks like a throttle (say a 429)
	// but carries a NotQuota marker: contention such as Stripe's
	// lock_timeout or billing such as OpenAI's insufficient_quota. It must
	// be passed through as is; no quota may be learned from it.
	KindNotQuota
)

// String returns the lower-case name of k, as used in logs.
func (k Kind) String() string {
	switch k {
	case KindNone:
		return "none"
	case KindQuota:
		return "quota"
	case KindOverload:
		return "overload"
	case KindNotQuota:
		return "not_quota"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Verdict is the result of Classify.
type Verdict struct {
	// Throttle is true exactly when Kind is KindQuota or KindOverload:
	// the upstream asked the client to slow down and try again later.
	Throttle bool
	// Kind says what sort of throttle it is; KindNone when none.
	Kind Kind
	// Rule names the rule that decided, for logs: "status:429",
	// "marker:rate_limit_reached", "field:status.code=CONN_THROTTLED",
	// "header:X-Ratelimit-Remaining=0", "status:503+retry-after",
	// "not_quota:lock_timeout" and the like. It is built only from the
	// status code and the configured Rules, never from header or body
	// values of the response, so it cannot leak a credential. Empty when
	// Kind is KindNone.
	Rule string
}

// BodyField matches a value inside a JSON body, whatever the status code.
type BodyField struct {
	// Path is a dot-separated list of object keys from the top of the
	// body, such as "status.code". Arrays are crossed transparently, and
	// may be written with "[]" for readability: "errors[].extensions.code"
	// matches "code" in the "extensions" object of any element of
	// "errors". Keys compare exactly; a key spelled with JSON escapes
	// (such as "co\u0064e") is not recognised.
	Path string `yaml:"path"`
	// Values are compared with the scalar at Path, ignoring ASCII case:
	// a JSON string by its content, a number by its literal text (so
	// "11005" matches both 11005 and "11005").
	Values []string `yaml:"values"`
}

// HeaderMarker matches a response header.
type HeaderMarker struct {
	// Name is the header name, compared ignoring case.
	Name string `yaml:"name"`
	// Value is compared with each value of the header, trimmed, ignoring
	// ASCII case, and numerically when both are numbers ("0" matches
	// "0.0"). An empty Value matches any non-empty value.
	Value string `yaml:"value"`
}

// Rules says, for one upstream, which responses are throttles. The zero
// Rules recognises nothing; start from DefaultRules and adjust. Empty
// strings in marker lists are ignored (they would match everything).
// Rules is read only by Classify, so one value may be shared by goroutines.
type Rules struct {
	// Statuses always throttle (KindQuota), unless a NotQuota marker is in
	// the body. Default: 429.
	Statuses []int `yaml:"statuses"`
	// MarkerStatuses throttle (KindQuota) only when a HeaderMarkers or
	// BodyMarkers entry matches. Default: 400, 403.
	MarkerStatuses []int `yaml:"marker_statuses"`
	// RetryAfterStatuses throttle when a marker matches (KindQuota) or,
	// failing that, when a Retry-After header is present (KindOverload).
	// Default: 503.
	RetryAfterStatuses []int `yaml:"retry_after_statuses"`
	// OverloadStatuses always mean an overloaded upstream (KindOverload),
	// whatever the body. Default: 529.
	OverloadStatuses []int `yaml:"overload_statuses"`
	// BodyMarkers are substrings of the body (its first MaxBody bytes),
	// compared ignoring ASCII case, that make a MarkerStatuses or
	// RetryAfterStatuses response a quota throttle. They work on JSON,
	// text/plain and truncated bodies alike.
	BodyMarkers []string `yaml:"body_markers"`
	// BodyFields are JSON values that make any response a quota throttle,
	// even a 200 (Clarifai's gRPC gateway, Shopify GraphQL). They cost a
	// substring scan of every body, and a JSON decode only when the last
	// key of a Path is followed by a wanted value; leave them out for
	// upstreams that need none.
	BodyFields []BodyField `yaml:"body_fields"`
	// HeaderMarkers make a MarkerStatuses or RetryAfterStatuses response
	// a quota throttle, such as GitHub's 403 with X-RateLimit-Remaining: 0.
	HeaderMarkers []HeaderMarker `yaml:"header_markers"`
	// NotQuota are body substrings, compared ignoring ASCII case, that turn
	// a would-be quota throttle into KindNotQuota: contention or billing
	// rather than rate limiting.
	NotQuota []string `yaml:"not_quota"`
}

// DefaultRules returns the rules that recognise the throttles of every
// vendor this package knows (see the package documentation). It returns a
// fresh value each time: the caller may modify it.
func DefaultRules() Rules {
	return Rules{
		Statuses:           []int{429},
		MarkerStatuses:     []int{400, 403},
		RetryAfterStatuses: []int{503},
		OverloadStatuses:   []int{529},
		BodyMarkers: []string{
			"rate_limit_reached",     // Clarabridge Engage 400
			"secondary rate limit",   // GitHub 403
			"rate limit exceeded",    // GitHub primary 403, Google message
			"userRateLimitExceeded",  // Google 403 reason
			"rateLimitExceeded",      // Google 403 reason
			"dailyLimitExceeded",     // Google 403 reason (daily quota)
			"RESOURCE_EXHAUSTED",     // Google 429/403 status
			"REQUEST_LIMIT_EXCEEDED", // Salesforce 403
			"rate_limit_error",       // Anthropic, Stripe error type
		},
		BodyFields: []BodyField{
			{Path: "status.code", Values: []string{ // Clarifai, any status
				"CONN_THROTTLED", "11005",
				"CONN_EXCEED_HOURLY_LIMIT", "11003",
				"CONN_EXCEED_MONTHLY_LIMIT", "11004",
				"CONN_EXCEEDS_LIMITS", "11006",
			}},
			{Path: "errors[].extensions.code", Values: []string{"THROTTLED"}}, // Shopify GraphQL 200
		},
		HeaderMarkers: []HeaderMarker{
			{Name: "X-RateLimit-Remaining", Value: "0"}, // GitHub primary 403
		},
		NotQuota: []string{
			"lock_timeout",       // Stripe object contention
			"insufficient_quota", // OpenAI billing
		},
	}
}

// Classify says whether a response is a throttle and of what kind. Only the
// first MaxBody bytes of body are read; body may be JSON, text or truncated.
// It never panics and does not modify its arguments. The rules are tried in
// this order, first match wins:
//
//  1. status in OverloadStatuses: KindOverload;
//  2. a BodyFields value, any status: KindQuota;
//  3. status in Statuses: KindQuota;
//  4. status in MarkerStatuses or RetryAfterStatuses with a HeaderMarkers
//     or BodyMarkers match: KindQuota;
//  5. status in RetryAfterStatuses with a Retry-After header: KindOverload.
//
// A KindQuota verdict whose body holds a NotQuota marker becomes KindNotQuota
// (Throttle false).
func Classify(r Rules, status int, h http.Header, body []byte) Verdict {
	body = head(body)
	v := classify(r, status, h, body)
	if v.Kind == KindQuota {
		if m, ok := firstMarker(body, r.NotQuota); ok {
			return Verdict{Kind: KindNotQuota, Rule: "not_quota:" + m}
		}
	}
	v.Throttle = v.Kind == KindQuota || v.Kind == KindOverload
	return v
}

func classify(r Rules, status int, h http.Header, body []byte) Verdict {
	if has(r.OverloadStatuses, status) {
		return Verdict{Kind: KindOverload, Rule: "status:" + strconv.Itoa(status)}
	}
	if rule, ok := matchFields(body, r.BodyFields); ok {
		return Verdict{Kind: KindQuota, Rule: rule}
	}
	if has(r.Statuses, status) {
		return Verdict{Kind: KindQuota, Rule: "status:" + strconv.Itoa(status)}
	}
	marker := has(r.MarkerStatuses, status)
	retry := has(r.RetryAfterStatuses, status)
	if marker || retry {
		if rule, ok := matchHeaders(h, r.HeaderMarkers); ok {
			return Verdict{Kind: KindQuota, Rule: rule}
		}
		if m, ok := firstMarker(body, r.BodyMarkers); ok {
			return Verdict{Kind: KindQuota, Rule: "marker:" + m}
		}
	}
	if retry && hasValue(lookup(h, "Retry-After")) {
		return Verdict{Kind: KindOverload, Rule: "status:" + strconv.Itoa(status) + "+retry-after"}
	}
	return Verdict{}
}

// hasValue reports whether some value is not blank.
func hasValue(values []string) bool {
	for _, v := range values {
		if strings.TrimSpace(v) != "" {
			return true
		}
	}
	return false
}

func has(list []int, v int) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

// firstMarker returns the first non-empty marker that occurs in body.
func firstMarker(body []byte, markers []string) (string, bool) {
	for _, m := range markers {
		if m != "" && containsFold(body, m) {
			return m, true
		}
	}
	return "", false
}

// matchHeaders returns the rule of the first header marker that matches.
func matchHeaders(h http.Header, markers []HeaderMarker) (string, bool) {
	for _, m := range markers {
		if strings.TrimSpace(m.Name) == "" {
			continue
		}
		for _, v := range lookup(h, strings.TrimSpace(m.Name)) {
			if headerValueMatches(strings.TrimSpace(v), m.Value) {
				rule := "header:" + strings.TrimSpace(m.Name)
				if m.Value != "" {
					rule += "=" + m.Value
				}
				return rule, true
			}
		}
	}
	return "", false
}

func headerValueMatches(got, want string) bool {
	want = strings.TrimSpace(want)
	if got == "" {
		return false
	}
	if want == "" || equalFoldASCII(got, want) {
		return true
	}
	g, ok1 := parseNumber(got)
	w, ok2 := parseNumber(want)
	return ok1 && ok2 && g == w
}

// matchFields returns the rule of the first body field that matches. It
// decodes the body only when keyMayHold finds a candidate, so the common
// response costs a fast substring scan, not a JSON decode.
func matchFields(body []byte, fields []BodyField) (string, bool) {
	type wanted struct {
		path   []string
		values []string
		name   string
	}
	var ws []wanted
	for i, f := range fields {
		key := lastKey(f.Path)
		if key == "" || slices.ContainsFunc(fields[:i], func(g BodyField) bool { return lastKey(g.Path) == key }) {
			continue // empty, or already scanned for
		}
		// One scan serves every field whose path ends in the same key.
		if !keyMayHold(body, key, fields[i:]) {
			continue
		}
		for _, g := range fields[i:] {
			if lastKey(g.Path) == key {
				path := strings.Split(strings.ReplaceAll(strings.TrimSpace(g.Path), "[]", ""), ".")
				ws = append(ws, wanted{path: path, values: g.Values, name: g.Path})
			}
		}
	}
	if len(ws) == 0 {
		return "", false
	}
	rule := ""
	walkJSON(body, func(path []string, v any) bool {
		text := jsonText(v)
		for _, w := range ws {
			if !slices.Equal(path, w.path) {
				continue
			}
			for _, want := range w.values {
				if want != "" && equalFoldASCII(text, want) {
					rule = "field:" + w.name + "=" + want
					return true
				}
			}
		}
		return false
	})
	return rule, rule != ""
}

// keyMayHold reports whether body has a member "key": whose scalar value
// might equal (ignoring ASCII case) a value of a field whose path ends in
// key. It is a fast necessary condition for a BodyFields match; a key
// written with JSON escapes is not seen, and a string value with escapes
// always counts as a candidate.
func keyMayHold(body []byte, key string, fields []BodyField) bool {
	var buf [64]byte
	pat := append(append(append(buf[:0], '"'), key...), '"')
	for off := 0; off < len(body); {
		i := bytes.Index(body[off:], pat)
		if i < 0 {
			return false
		}
		off += i + len(pat)
		j := skipSpace(body, off)
		if j == len(body) || body[j] != ':' {
			continue
		}
		j = skipSpace(body, j+1)
		var text []byte
		if j < len(body) && body[j] == '"' {
			end := bytes.IndexByte(body[j+1:], '"')
			if end < 0 {
				return false // truncated inside the value
			}
			text = body[j+1 : j+1+end]
			if bytes.IndexByte(text, '\\') >= 0 {
				return true
			}
		} else {
			k := j
			for k < len(body) && !isDelimiter(body[k]) {
				k++
			}
			text = body[j:k]
		}
		for _, f := range fields {
			if lastKey(f.Path) != key {
				continue
			}
			for _, v := range f.Values {
				if v != "" && equalFoldASCII(text, v) {
					return true
				}
			}
		}
	}
	return false
}

// isDelimiter reports whether c ends a JSON number or literal.
func isDelimiter(c byte) bool {
	return c == ',' || c == '}' || c == ']' || c == ' ' || c == '\t' || c == '\r' || c == '\n'
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n') {
		i++
	}
	return i
}

// lastKey returns the last key of a BodyField path, without allocating.
func lastKey(path string) string {
	path = strings.TrimSuffix(strings.TrimSpace(path), "[]")
	return strings.TrimSuffix(path[strings.LastIndexByte(path, '.')+1:], "[]")
}
