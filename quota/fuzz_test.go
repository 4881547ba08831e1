package quota

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

// FuzzParseLimit: ParseLimit never panics, every error quotes the input,
// what it accepts is within bounds, and String writes it back in a form
// ParseLimit reads as the same limit.
func FuzzParseLimit(f *testing.F) {
	for _, s := range []string{
		"15/1s", "300/1m", "10000/24h", "350/h", "5/d", "1/7d", "2/366d", "1/367d", "1/1ms", "1/999us",
		"10000000/1s", "10000001/1s", " 3 / 1m30s ", "1/1.5s", "0/1s", "-1/1s", "+5/1s", "1/", "/1s", "1/1s/2",
		"1/0d", "1/-1s", "1/1e3s", "9223372036854775807/1s", "1/2562047h",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := ParseLimit(s)
		if err != nil {
			if !strings.Contains(err.Error(), strconv.Quote(s)) {
				t.Errorf("error %q does not quote the input %q", err, s)
			}
			return
		}
		if l.Count < 1 || l.Count > MaxLimitCount || l.Window < time.Millisecond || l.Window > 366*24*time.Hour {
			t.Fatalf("ParseLimit(%q) = %+v: out of bounds", s, l)
		}
		back, err := ParseLimit(l.String())
		if err != nil || back != l {
			t.Errorf("ParseLimit(%q) = %+v, written %q, read back %+v (%v)", s, l, l.String(), back, err)
		}
	})
}
