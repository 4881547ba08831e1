package signals

import (
	"bytes"
	"encoding/json"
	"math"
	"net/http"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"time"
)

// MaxBody is the number of leading body bytes that Classify and Wait examine.
// Anything after it is ignored, so a huge body costs at most this much work.
const MaxBody = 64 << 10

// maxMembers caps the members read from one list-valued header (a policy
// list, a RateLimit field), so a hostile header cannot make Quota allocate
// or merge without bound.
const maxMembers = 16

// maxBucket caps the length of a bucket name taken from a header.
const maxBucket = 128

// maxSeconds is the largest number of seconds converted to a Duration
// without saturating (about 285 years, well inside Duration's range).
const maxSeconds = 9e9

// head returns at most the first MaxBody bytes of body.
func head(body []byte) []byte {
	if len(body) > MaxBody {
		return body[:MaxBody]
	}
	return body
}

// knownHeaders lists, in lower case, every header name that Wait and Quota
// read. Filling a headers value indexes them in one pass over the map.
// Read only after initialisation.
var knownHeaders = func() []string {
	names := []string{"date", "retry-after", "retry-after-ms", "x-rate-limit",
		"x-shopify-shop-api-call-limit", "sforce-limit-info"}
	for _, p := range []string{"ratelimit", "beta-ratelimit"} {
		names = append(names, p, p+"-policy", p+"-limit", p+"-remaining", p+"-reset")
	}
	for _, p := range []string{"x-ratelimit-", "x-rate-limit-"} {
		for _, s := range []string{"limit", "remaining", "used", "reset", "reset-after", "time", "resource", "bucket"} {
			names = append(names, p+s)
		}
	}
	for _, dim := range []string{"requests", "tokens"} {
		for _, k := range []string{"limit", "remaining", "reset"} {
			names = append(names, "x-ratelimit-"+k+"-"+dim)
		}
	}
	for _, dim := range anthropicDims {
		for _, k := range []string{"limit", "remaining", "reset"} {
			names = append(names, "anthropic-ratelimit-"+dim+"-"+k)
		}
	}
	for _, s := range []string{"daily", "daily-remaining", "secondly", "secondly-remaining", "max", "remaining", "interval-milliseconds"} {
		names = append(names, "x-hubspot-ratelimit-"+s)
	}
	return names
}()

// maxKnown bounds len(knownHeaders); a test checks it.
const maxKnown = 72

// knownIndex maps each of knownHeaders to its position. Read only.
var knownIndex = func() map[string]int {
	m := make(map[string]int, len(knownHeaders))
	for i, n := range knownHeaders {
		m[n] = i
	}
	return m
}()

// headers finds header values by name ignoring case, even when the map was
// built by hand with non-canonical keys.
type headers struct {
	h     http.Header
	known [maxKnown][]string // values of knownHeaders[i]
	any   bool               // some known header besides Date is present
}

// fill indexes the known headers of h in one pass, without allocating in
// the common case.
func (hs *headers) fill(h http.Header) {
	hs.h = h
	var buf [64]byte
	for k, v := range h {
		if len(k) > len(buf) || len(v) == 0 {
			continue
		}
		n := copy(buf[:], k)
		for i := range n {
			buf[i] = lower(buf[i])
		}
		i, ok := knownIndex[string(buf[:n])]
		if ok && knownHeaders[i] != "date" {
			hs.any = true
		}
		switch {
		case !ok:
		case hs.known[i] == nil:
			hs.known[i] = v
		default:
			// Several spellings of one name: rare, so collect them again
			// in an order that does not depend on map iteration.
			hs.known[i] = allValues(h, knownHeaders[i])
		}
	}
}

// values returns every value of the header name (lower case), in order.
func (hs *headers) values(name string) []string {
	if i, ok := knownIndex[name]; ok {
		return hs.known[i]
	}
	return lookup(hs.h, name)
}

// get returns the first value of the header name (lower case), trimmed,
// or "".
func (hs *headers) get(name string) string {
	v := hs.values(name)
	if len(v) == 0 {
		return ""
	}
	return strings.TrimSpace(v[0])
}

// joined returns every value of the header name (lower case) joined by
// commas, as a list-valued field split over several lines must be read.
func (hs *headers) joined(name string) string {
	v := hs.values(name)
	switch len(v) {
	case 0:
		return ""
	case 1:
		return v[0]
	}
	return strings.Join(v, ",")
}

// lookup returns the values of the header name in h, ignoring case.
func lookup(h http.Header, name string) []string {
	if v := h[textproto.CanonicalMIMEHeaderKey(name)]; len(v) > 0 {
		return v
	}
	return allValues(h, name)
}

// allValues returns the values of every key of h that equals name ignoring
// ASCII case: the canonical key's first, then the others in key order.
func allValues(h http.Header, name string) []string {
	canonical := textproto.CanonicalMIMEHeaderKey(name)
	var keys []string
	for k := range h {
		if k != canonical && equalFoldASCII(k, name) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	out := slices.Clone(h[canonical])
	for _, k := range keys {
		out = append(out, h[k]...)
	}
	return out
}

// clock turns absolute times sent by the upstream (epochs, HTTP-dates,
// RFC 3339) into waits from now, the local time the response was read.
//
// The response Date header has whole seconds: when the upstream answered,
// its clock read an instant in [Date, Date+1s), and it has read at least
// Date ever since. When the local clock agrees with Date (Date <= now <
// Date+1s), the two clocks are taken to be one and an absolute time t is
// t-now away: exact, where measuring from Date would add the fraction of
// a second that Date drops. When they disagree, the upstream's clock is
// off by a skew that Date measures to within a second, and t is t-Date
// away: as the upstream's clock reads at least Date now, that never ends
// before the upstream's own t, and it ends at most a second (plus the
// response's transit) after it. A skew under a second is below what Date
// can show and is taken as none: an upstream clock that far behind ours
// ends the wait that much early. Without a Date that parses, t is t-now
// away.
type clock struct {
	base time.Time // the instant absolute times are measured from
}

func newClock(hs *headers, now time.Time) clock {
	if d := hs.get("date"); d != "" {
		if date, err := http.ParseTime(d); err == nil {
			if now.Before(date) || !now.Before(date.Add(time.Second)) {
				return clock{base: date} // skewed: correct by what Date shows
			}
		}
	}
	return clock{base: now}
}

// until returns the time from the base to t, saturating at Duration's range.
func (c clock) until(t time.Time) time.Duration {
	return t.Sub(c.base)
}

// untilUnix returns the time from the base to the Unix time v, counted in
// milliseconds when ms is set and in seconds otherwise; v may be fractional
// or infinite. Whole seconds and milliseconds are converted exactly, so a
// reset on a whole second is never read a float rounding error early.
func (c clock) untilUnix(v float64, ms bool) time.Duration {
	const far = 9e15 // beyond any sane time, still exact in a float64
	switch {
	case math.IsNaN(v):
		return 0
	case v >= far:
		return math.MaxInt64
	case v <= -far:
		return math.MinInt64
	}
	whole := math.Floor(v)
	frac := v - whole // in [0, 1) of the unit
	sec, nsec := whole, math.Round(frac*1e9)
	if ms {
		sec = math.Floor(whole / 1000)
		nsec = (whole-sec*1000)*1e6 + math.Round(frac*1e6)
	}
	return time.Unix(int64(sec), int64(nsec)).Sub(c.base)
}

// trimValue removes surrounding white space and one pair of double quotes.
func trimValue(s string) string {
	s = strings.TrimSpace(s)
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		s = strings.TrimSpace(s[1 : len(s)-1])
	}
	return s
}

// isDecimal reports whether s is a plain decimal number: an optional sign,
// digits with an optional fraction (at least one digit), and an optional
// exponent. It rejects "NaN", "Inf", hexadecimal and underscores.
func isDecimal(s string) bool {
	i := 0
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		i++
	}
	digits := 0
	for i < len(s) && isDigit(s[i]) {
		i++
		digits++
	}
	if i < len(s) && s[i] == '.' {
		i++
		for i < len(s) && isDigit(s[i]) {
			i++
			digits++
		}
	}
	if digits == 0 {
		return false
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		exp := 0
		for i < len(s) && isDigit(s[i]) {
			i++
			exp++
		}
		if exp == 0 {
			return false
		}
	}
	return i == len(s)
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// parseNumber parses a decimal number, optionally quoted. A number too large
// for float64 (such as 1e999) yields an infinity; NaN is never returned.
func parseNumber(s string) (float64, bool) {
	s = trimValue(s)
	if !isDecimal(s) {
		return 0, false
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		// Only ErrRange can reach here: f is ±Inf or 0, both meaningful.
		if ne, ok := err.(*strconv.NumError); !ok || ne.Err != strconv.ErrRange {
			return 0, false
		}
	}
	return f, true
}

// parseCount parses a request or token count. Negative values become 0 and
// values beyond int64 saturate; infinities are rejected as garbage.
func parseCount(s string) (int64, bool) {
	f, ok := parseNumber(s)
	if !ok || math.IsInf(f, 0) {
		return 0, false
	}
	switch {
	case f <= 0:
		return 0, true
	case f >= 9.2e18:
		return math.MaxInt64, true
	}
	return int64(f), true
}

// secondsToDuration converts seconds to a Duration, rounding to the
// nanosecond and saturating far beyond any sane wait instead of overflowing.
func secondsToDuration(f float64) time.Duration {
	switch {
	case math.IsNaN(f):
		return 0
	case f >= maxSeconds:
		return math.MaxInt64
	case f <= -maxSeconds:
		return math.MinInt64
	}
	return time.Duration(math.Round(f * 1e9))
}

// parseSeconds parses a decimal number of seconds.
func parseSeconds(s string) (time.Duration, bool) {
	f, ok := parseNumber(s)
	if !ok {
		return 0, false
	}
	return secondsToDuration(f), true
}

// durationUnits maps the unit suffixes of duration strings to seconds.
var durationUnits = map[string]float64{
	"ns": 1e-9,
	"us": 1e-6,
	"µs": 1e-6, // U+00B5 micro sign
	"μs": 1e-6, // U+03BC Greek mu
	"ms": 1e-3,
	"s":  1,
	"m":  60,
	"h":  3600,
	"d":  86400,
}

// parseDuration parses a duration string such as "6m0s", "1.5s", "20ms",
// "1h2m3.5s" or a protobuf duration "35s"; a bare number is seconds.
// It saturates instead of overflowing. A leading sign is allowed.
func parseDuration(s string) (time.Duration, bool) {
	s = trimValue(s)
	if s == "" {
		return 0, false
	}
	if d, ok := parseSeconds(s); ok {
		return d, true
	}
	neg := false
	switch s[0] {
	case '-':
		neg = true
		s = s[1:]
	case '+':
		s = s[1:]
	}
	if s == "" {
		return 0, false
	}
	total := 0.0
	for s != "" {
		i := 0
		for i < len(s) && (isDigit(s[i]) || s[i] == '.') {
			i++
		}
		num := s[:i]
		if num == "" || num == "." || strings.Count(num, ".") > 1 {
			return 0, false
		}
		f, ok := parseNumber(num)
		if !ok {
			return 0, false
		}
		s = s[i:]
		j := 0
		for j < len(s) && !isDigit(s[j]) && s[j] != '.' {
			j++
		}
		mult, ok := durationUnits[s[:j]]
		if !ok {
			return 0, false
		}
		total += f * mult
		s = s[j:]
	}
	if neg {
		total = -total
	}
	return secondsToDuration(total), true
}

// timeLayouts are the absolute time formats accepted besides HTTP-date:
// RFC 3339 (with or without fraction), ISO 8601 to the minute, and the same
// without a zone (taken as UTC).
var timeLayouts = [...]string{
	time.RFC3339Nano,
	"2006-01-02T15:04Z07:00",
	"2006-01-02T15:04:05",
	"2006-01-02T15:04",
	"2006-01-02 15:04:05Z07:00",
	"2006-01-02 15:04:05",
}

// parseTime parses an HTTP-date, RFC 3339 or ISO 8601 time.
func parseTime(s string) (time.Time, bool) {
	s = trimValue(s)
	if s == "" {
		return time.Time{}, false
	}
	if t, err := http.ParseTime(s); err == nil {
		return t, true
	}
	for _, layout := range timeLayouts {
		if t, err := time.Parse(layout, s); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}

// resetValue parses a reset header value into the time until the reset.
// A bare number above 1e12 is epoch milliseconds, above 1e9 epoch seconds,
// otherwise delta seconds; fractions are allowed. Epochs and absolute times
// are resolved with the clock (see clock).
func resetValue(s string, c clock) (time.Duration, bool) {
	if f, ok := parseNumber(s); ok {
		switch {
		case f > 1e12:
			return c.untilUnix(f, true), true
		case f > 1e9:
			return c.untilUnix(f, false), true
		}
		return secondsToDuration(f), true
	}
	if t, ok := parseTime(s); ok {
		return c.until(t), true
	}
	return 0, false
}

// splitTop splits s at every sep that is not inside a double-quoted string.
func splitTop(s string, sep byte) []string {
	var parts []string
	start := 0
	quoted := false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case quoted && c == '\\':
			i++
		case c == '"':
			quoted = !quoted
		case !quoted && c == sep:
			parts = append(parts, s[start:i])
			start = i + 1
		}
	}
	return append(parts, s[start:])
}

// unquote returns s without surrounding double quotes and with backslash
// escapes resolved; an unquoted s is returned trimmed and unchanged.
func unquote(s string) string {
	s = strings.TrimSpace(s)
	if len(s) == 0 || s[0] != '"' {
		return s
	}
	s = s[1:]
	if !strings.ContainsRune(s, '\\') {
		return strings.TrimSuffix(s, `"`)
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '\\' && i+1 < len(s) {
			i++
			c = s[i]
		} else if c == '"' {
			break
		}
		b.WriteByte(c)
	}
	return b.String()
}

// member is one element of a list-valued header in the structured-field
// style: an item followed by ;key=value parameters.
type member struct {
	item   string // as written, trimmed (still quoted if it was)
	params []param
}

type param struct {
	key   string // lower case
	value string // unquoted
}

// parseMembers parses up to maxMembers members of a comma-separated list
// such as `300;w=60, 10000;w=86400` or `"p";q=100;w=60`.
func parseMembers(s string) []member {
	var out []member
	for _, m := range splitTop(s, ',') {
		if len(out) == maxMembers {
			break
		}
		parts := splitTop(m, ';')
		mem := member{item: strings.TrimSpace(parts[0])}
		for _, p := range parts[1:] {
			k, v, _ := strings.Cut(p, "=")
			k = strings.ToLower(strings.TrimSpace(k))
			if k == "" {
				continue
			}
			mem.params = append(mem.params, param{key: k, value: unquote(v)})
		}
		if mem.item == "" && len(mem.params) == 0 {
			continue
		}
		out = append(out, mem)
	}
	return out
}

// param returns the value of the first parameter named key.
func (m member) param(key string) (string, bool) {
	for _, p := range m.params {
		if p.key == key {
			return p.value, true
		}
	}
	return "", false
}

// containsFold reports whether sub occurs in b, ignoring ASCII case.
// It jumps between occurrences of sub's first byte with bytes.IndexByte,
// so a long body without that byte is scanned at memory speed.
func containsFold(b []byte, sub string) bool {
	n := len(sub)
	if n == 0 || n > len(b) {
		return false
	}
	lo, up := lower(sub[0]), upper(sub[0])
	nextLo, nextUp := -1, -1 // next index of lo and up at or after i; -1 unknown
	last := len(b) - n
	for i := 0; i <= last; {
		if nextLo < i {
			if nextLo = bytes.IndexByte(b[i:last+1], lo); nextLo >= 0 {
				nextLo += i
			} else {
				nextLo = len(b)
			}
		}
		if nextUp < i {
			if nextUp = bytes.IndexByte(b[i:last+1], up); nextUp >= 0 {
				nextUp += i
			} else {
				nextUp = len(b)
			}
		}
		i = min(nextLo, nextUp)
		if i > last {
			return false
		}
		if equalFoldASCII(b[i+1:i+n], sub[1:]) {
			return true
		}
		i++
	}
	return false
}

// equalFoldASCII reports whether b and s are equal ignoring ASCII case.
func equalFoldASCII[T string | []byte](b T, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		if lower(b[i]) != lower(s[i]) {
			return false
		}
	}
	return true
}

func upper(c byte) byte {
	if 'a' <= c && c <= 'z' {
		return c - ('a' - 'A')
	}
	return c
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// walkJSON calls visit for every scalar in the first JSON value of data,
// with the object keys leading to it (array positions are not part of the
// path), until visit returns true. It stops quietly at the first syntax
// error, so a truncated body still yields every value before the cut.
// The path slice is reused between calls: visit must not keep it.
func walkJSON(data []byte, visit func(path []string, v any) bool) {
	i := 0
	for i < len(data) && (data[i] == ' ' || data[i] == '\t' || data[i] == '\r' || data[i] == '\n') {
		i++
	}
	if i == len(data) || (data[i] != '{' && data[i] != '[') {
		return
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	type frame struct {
		object bool
		key    bool // in an object: the next token is a key
	}
	var stack []frame
	var path []string
	valueDone := func() {
		if n := len(stack); n > 0 && stack[n-1].object {
			path = path[:len(path)-1]
			stack[n-1].key = true
		}
	}
	for {
		tok, err := dec.Token()
		if err != nil {
			return
		}
		if n := len(stack); n > 0 && stack[n-1].object && stack[n-1].key {
			if k, ok := tok.(string); ok {
				path = append(path, k)
				stack[n-1].key = false
				continue
			}
		}
		if d, ok := tok.(json.Delim); ok {
			switch d {
			case '{':
				stack = append(stack, frame{object: true, key: true})
			case '[':
				stack = append(stack, frame{})
			default:
				if len(stack) == 0 {
					return
				}
				stack = stack[:len(stack)-1]
				valueDone()
			}
		} else {
			if visit(path, tok) {
				return
			}
			valueDone()
		}
		if len(stack) == 0 {
			return
		}
	}
}

// jsonText returns the text of a JSON scalar as the decoder gave it:
// strings as is, numbers as written, booleans and null as their literals.
func jsonText(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case json.Number:
		return string(v)
	case bool:
		return strconv.FormatBool(v)
	case nil:
		return "null"
	}
	return ""
}
