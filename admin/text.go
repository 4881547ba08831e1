package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// maxPages bounds how many pages FetchQuotas follows.
const maxPages = 100

// FetchQuotas reads every page of baseURL's /v1/quotas (baseURL is the
// admin address, such as http://127.0.0.1:8081) and returns them as one.
func FetchQuotas(ctx context.Context, c *http.Client, baseURL string) (*QuotasPage, error) {
	all := &QuotasPage{Keys: []KeyQuota{}}
	cursor := ""
	for range maxPages {
		u := strings.TrimRight(baseURL, "/") + "/v1/quotas?limit=" + fmt.Sprint(maxPageSize)
		if cursor != "" {
			u += "&cursor=" + url.QueryEscape(cursor)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return nil, err
		}
		resp, err := c.Do(req)
		if err != nil {
			return nil, err
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
		resp.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", u, err)
		}
		if resp.StatusCode != http.StatusOK {
			var e apiError
			json.Unmarshal(body, &e)
			if e.Error == "" {
				e.Error = strings.TrimSpace(string(body))
			}
			return nil, fmt.Errorf("%s answered %s: %s", u, resp.Status, e.Error)
		}
		var page QuotasPage
		if err := json.Unmarshal(body, &page); err != nil {
			return nil, fmt.Errorf("%s: not a quotas document: %w", u, err)
		}
		if all.Now.IsZero() {
			all.Now = page.Now
		}
		all.Keys = append(all.Keys, page.Keys...)
		if page.NextCursor == "" {
			return all, nil
		}
		cursor = page.NextCursor
	}
	return nil, fmt.Errorf("%s: more than %d pages of keys", baseURL, maxPages)
}

// barWidth is the width of a text quota bar, in characters.
const barWidth = 20

// WriteStatus writes page as text, one block per upstream and key: a bar
// of each limit's use, what is left, when the next request may leave, the
// cooldown and the queue.
//
//	api
//	  3f2a9c0d1e4b  header:apikey  queue 0  cooldown none
//	    5/1m       [############--------]           3/5 used      2 left  next free now
func WriteStatus(w io.Writer, page *QuotasPage) error {
	var b strings.Builder
	if len(page.Keys) == 0 {
		b.WriteString("no key seen yet\n")
	}
	upstream := ""
	for i, k := range page.Keys {
		if i == 0 || k.Upstream != upstream {
			if i > 0 {
				b.WriteByte('\n')
			}
			upstream = k.Upstream
			b.WriteString(upstream + "\n")
		}
		cooldown := "none"
		if k.CooldownSeconds > 0 {
			cooldown = seconds(k.CooldownSeconds)
		}
		fmt.Fprintf(&b, "  %-12s  %s  queue %d  cooldown %s", k.Key, k.Identity, k.Queued, cooldown)
		if k.Probing {
			b.WriteString("  probing")
		}
		if k.Error != "" {
			b.WriteString("  error: " + k.Error)
		}
		b.WriteByte('\n')
		for _, l := range k.Limits {
			name := l.Limit
			if l.Source != "config" {
				name += " (" + l.Source + ")"
			}
			fmt.Fprintf(&b, "    %-10s %s %13s used %6d left  next free %s\n",
				name, bar(l.Used, l.Count), fmt.Sprintf("%d/%d", l.Used, l.Count), l.Remaining, until(l.NextFree, page.Now))
		}
		if k.Learned != nil && k.Learned.Remaining != nil && k.Learned.ResetAt != nil {
			fmt.Fprintf(&b, "    upstream reports %d left, reset %s\n", *k.Learned.Remaining, until(*k.Learned.ResetAt, page.Now))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// bar draws used of count as [####----].
func bar(used, count int) string {
	filled := 0
	if count > 0 {
		filled = min(int(math.Ceil(float64(barWidth)*float64(used)/float64(count))), barWidth)
	}
	return "[" + strings.Repeat("#", filled) + strings.Repeat("-", barWidth-filled) + "]"
}

// until says how long from now t is: "now", "in 42s".
func until(t, now time.Time) string {
	d := t.Sub(now)
	if d <= 0 {
		return "now"
	}
	return "in " + seconds(d.Seconds())
}

// seconds writes a duration in seconds the way a person reads it.
func seconds(s float64) string {
	d := time.Duration(math.Ceil(s)) * time.Second
	switch {
	case d < 2*time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < 2*time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	}
	return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
}
