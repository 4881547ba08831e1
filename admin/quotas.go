package admin

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// QuotasPage is the document GET /v1/quotas serves: one page of the keys
// this proxy has seen, ordered by upstream and fingerprint, with their
// state as the quota store tells it now.
type QuotasPage struct {
	// Now is the store's clock when the page was read: the times below
	// are to be read against it, not against the reader's clock.
	Now  time.Time  `json:"now"`
	Keys []KeyQuota `json:"keys"`
	// NextCursor, when set, fetches the next page (?cursor=).
	NextCursor string `json:"next_cursor,omitempty"`
}

// KeyQuota is the quota state of one key.
type KeyQuota struct {
	Upstream string `json:"upstream"`
	// Key is the key's fingerprint (first 12 hex digits of the
	// credential's SHA-256) or "anonymous"; Identity is the rule that
	// found it.
	Key      string `json:"key"`
	Identity string `json:"identity"`
	// LastSeen is when the last request of the key ended.
	LastSeen time.Time `json:"last_seen"`
	// Limits are the limits in force: the configured ones, then the
	// windows the upstream reported.
	Limits []LimitQuota `json:"limits"`
	// Remaining is how many more requests may leave now: the least of
	// every limit's remaining and the upstream's reported budget; -1 when
	// nothing limits the key.
	Remaining int `json:"remaining"`
	// NextFree is the earliest time one more request could leave (Now when
	// it could leave now).
	NextFree time.Time `json:"next_free"`
	// Queued counts requests waiting for a slot; Booked the slots kept for
	// the retries of refused requests; InFlight those released and not yet
	// written upstream.
	Queued   int `json:"queued"`
	Booked   int `json:"booked"`
	InFlight int `json:"in_flight"`
	// HoldUntil is when a hold set by the upstream (a throttle, or its
	// reported quota running out) ends; CooldownSeconds is what is left of
	// it. Probing: the next request goes alone, to see whether the
	// upstream still throttles.
	HoldUntil       *time.Time `json:"hold_until,omitempty"`
	CooldownSeconds float64    `json:"cooldown_seconds"`
	Probing         bool       `json:"probing"`
	// Learned is what the upstream reported about the key's quota, while
	// it is in force.
	Learned *Learned `json:"learned,omitempty"`
	// Error is set when the store could not be read for this key; the
	// state fields are then empty.
	Error string `json:"error,omitempty"`
}

// LimitQuota is the use of one limit of a key.
type LimitQuota struct {
	// Limit is written as in the config ("300/1m"); Source is "config" or
	// "learned" (a window the upstream reported).
	Limit         string  `json:"limit"`
	Source        string  `json:"source"`
	Count         int     `json:"count"`
	WindowSeconds float64 `json:"window_seconds"`
	// MarginSeconds is the window margin in force: the store counts
	// requests over window_seconds + margin_seconds.
	MarginSeconds float64 `json:"margin_seconds"`
	// Used counts the requests sent, or on their way, in the window that
	// ends now; Remaining is Count - Used, at least 0.
	Used      int `json:"used"`
	Remaining int `json:"remaining"`
	// NextFree is when one more request could leave under this limit
	// alone.
	NextFree time.Time `json:"next_free"`
}

// Learned is what an upstream reported about a key's quota.
type Learned struct {
	// Remaining is the budget the upstream reported, less what was sent
	// since and the learn threshold (at least 0), until ResetAt; absent
	// without a report in force.
	Remaining *int       `json:"remaining,omitempty"`
	ResetAt   *time.Time `json:"reset_at,omitempty"`
	// Limits are the windows the upstream reported, in force until
	// LimitsUntil.
	Limits      []string   `json:"limits,omitempty"`
	LimitsUntil *time.Time `json:"limits_until,omitempty"`
}

// Paging of /v1/quotas.
const (
	defaultPageSize = 100
	maxPageSize     = 1000
)

func (a *endpoints) quotas(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if a.inspector == nil {
		writeJSON(w, http.StatusNotImplemented, apiError{"the quota store cannot describe keys"})
		return
	}
	q := r.URL.Query()
	limit := defaultPageSize
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxPageSize {
			writeJSON(w, http.StatusBadRequest, apiError{"limit: want a whole number from 1 to " + strconv.Itoa(maxPageSize)})
			return
		}
		limit = n
	}
	after := ""
	if c := q.Get("cursor"); c != "" {
		b, err := base64.RawURLEncoding.DecodeString(c)
		if err != nil || len(b) == 0 {
			writeJSON(w, http.StatusBadRequest, apiError{"cursor: not one this endpoint gave"})
			return
		}
		after = string(b)
	}
	keys, next := a.page(q.Get("upstream"), after, limit)
	ctx, cancel := context.WithTimeout(r.Context(), a.opts.Timeout)
	defer cancel()
	page := QuotasPage{Keys: make([]KeyQuota, 0, len(keys))}
	for _, k := range keys {
		kq, now := a.inspect(ctx, k)
		page.Now = later(page.Now, now)
		page.Keys = append(page.Keys, kq)
	}
	if page.Now.IsZero() {
		// No key read: the store's clock all the same, so that readers
		// never mix two clocks.
		page.Now = time.Now()
		if st, err := a.inspector.Inspect(ctx, inspectKey, nil); err == nil {
			page.Now = st.Now
		}
	}
	if next != "" {
		page.NextCursor = base64.RawURLEncoding.EncodeToString([]byte(next))
	}
	writeJSON(w, http.StatusOK, page)
}

// page returns up to limit seen keys of upstream (any when empty) that
// sort after the sort key after, and the cursor of the next page ("" when
// there is none).
func (a *endpoints) page(upstream, after string, limit int) ([]seenKey, string) {
	all := a.rec.seen()
	keys := all[:0]
	for _, k := range all {
		if (upstream == "" || k.upstream == upstream) && k.sortKey > after {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, func(x, y seenKey) int { return strings.Compare(x.sortKey, y.sortKey) })
	if len(keys) <= limit {
		return keys, ""
	}
	return keys[:limit], keys[limit-1].sortKey
}

// inspect reads one key's state from the store. It returns the store's
// clock at the reading (zero when the store failed).
func (a *endpoints) inspect(ctx context.Context, k seenKey) (KeyQuota, time.Time) {
	kq := KeyQuota{Upstream: k.upstream, Key: k.key, Identity: k.identity, LastSeen: k.lastSeen, Remaining: -1, Limits: []LimitQuota{}}
	st, err := a.inspector.Inspect(ctx, k.storeKey, k.enforced)
	if err != nil {
		a.rec.storeErrors.WithLabelValues("inspect").Inc()
		kq.Error = "the quota store did not answer"
		return kq, time.Time{}
	}
	kq.NextFree = st.Now
	kq.Queued, kq.Booked, kq.InFlight, kq.Probing = st.Queued, st.Booked, st.InFlight, st.Probing
	for i, ls := range st.Limits {
		lq := LimitQuota{
			Limit:         ls.Limit.String(),
			Source:        "learned",
			Count:         ls.Limit.Count,
			WindowSeconds: ls.Limit.Window.Seconds(),
			Used:          ls.Used,
			Remaining:     max(ls.Limit.Count-ls.Used, 0),
			NextFree:      ls.NextFree,
		}
		if i < len(k.enforced) && i < len(k.limits) && ls.Limit == k.enforced[i] {
			shown := k.limits[i]
			lq.Limit, lq.Source = shown.String(), "config"
			lq.WindowSeconds = shown.Window.Seconds()
			lq.MarginSeconds = (ls.Limit.Window - shown.Window).Seconds()
		}
		kq.Limits = append(kq.Limits, lq)
		kq.Remaining = least(kq.Remaining, lq.Remaining)
		kq.NextFree = later(kq.NextFree, ls.NextFree)
	}
	if st.HoldUntil.After(st.Now) {
		kq.HoldUntil = &st.HoldUntil
		kq.CooldownSeconds = st.HoldUntil.Sub(st.Now).Seconds()
		kq.NextFree = later(kq.NextFree, st.HoldUntil)
	}
	// A report is in force while BudgetUntil is set (the budget itself can
	// fall below zero: the upstream counted requests the proxy did not send).
	if !st.BudgetUntil.IsZero() || len(st.Learned) > 0 {
		l := &Learned{}
		if !st.BudgetUntil.IsZero() {
			budget := max(st.Budget, 0)
			l.Remaining, l.ResetAt = &budget, &st.BudgetUntil
			kq.Remaining = least(kq.Remaining, budget)
			if budget == 0 {
				kq.NextFree = later(kq.NextFree, st.BudgetUntil)
			}
		}
		if len(st.Learned) > 0 {
			for _, lim := range st.Learned {
				l.Limits = append(l.Limits, lim.String())
			}
			l.LimitsUntil = &st.LearnedUntil
		}
		kq.Learned = l
	}
	return kq, st.Now
}

// least is the smaller of two counts, -1 standing for no bound.
func least(a, b int) int {
	if a < 0 {
		return b
	}
	if b < 0 {
		return a
	}
	return min(a, b)
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

type apiError struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		status, data = http.StatusInternalServerError, []byte(`{"error":"encoding the answer failed"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(data, '\n'))
}
