package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/config"
	"github.com/ratelimit-proxy/ratelimit-proxy/proxy"
)

func runCheck(c *cli, cmd *command, args []string) error {
	cfg, cf, err := configVerb(c, cmd, args, nil)
	if cfg == nil {
		return err
	}
	if _, err := proxy.Compile(cfg); err != nil {
		return fmt.Errorf("%s: %w", cf.path, err)
	}
	fmt.Fprintf(c.stdout, "%s: ok (%d upstreams)\n", cf.path, len(cfg.Upstreams))
	printPolicy(c.stdout, cfg)
	return nil
}

// printPolicy writes what the proxy enforces, upstream by upstream, with
// profiles expanded and defaults filled.
func printPolicy(w io.Writer, cfg *config.Config) {
	admin := cfg.Admin
	if admin == "" {
		admin = "off"
	}
	fmt.Fprintf(w, "\nlisten %s, admin %s, unknown hosts: %s, CA %s\n", cfg.Listen, admin, cfg.UnknownHosts, cfg.CACert)
	fmt.Fprintf(w, "clients: %s\n", clients(cfg))
	if cfg.UnknownHosts == "allow" {
		fmt.Fprintf(w, "egress for unknown hosts: %s\n", egress(cfg.Egress))
	}
	for i := range cfg.Upstreams {
		u := &cfg.Upstreams[i]
		fmt.Fprintf(w, "\nupstream %s", u.Name)
		if u.Profile != "" {
			fmt.Fprintf(w, " (profile %s)", u.Profile)
		}
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		line := func(label, value string) { fmt.Fprintf(tw, "  %s\t%s\n", label, value) }
		line("hosts", strings.Join(u.Hosts, ", "))
		if u.ConnectTo != "" {
			line("connect_to", u.ConnectTo)
		}
		if len(u.Identity) == 0 {
			line("identity", "none: every request is anonymous")
		}
		for j, r := range u.Identity {
			label := ""
			if j == 0 {
				label = "identity"
			}
			rule := strings.Replace(r.Kind(), ":", " ", 1)
			switch {
			case r.Header != "":
				rule = "header " + r.Header
			case r.Authorization != "":
				rule = "Authorization: " + r.Authorization + " <credential>"
			}
			if len(r.Limits) > 0 {
				rule += ", its own limits " + limits(u, r.Limits)
			}
			line(label, fmt.Sprintf("%d. %s", j+1, rule))
		}
		line("limits", limits(u, u.Limits))
		line("anonymous", "one bucket shared by the requests no rule identifies: "+limits(u, u.Anonymous.Limits))
		for j, o := range u.Overrides {
			label := ""
			if j == 0 {
				label = "overrides"
			}
			who := "prefix " + strconv.Quote(o.Prefix)
			if o.Fingerprint != "" {
				who = "fingerprint " + o.Fingerprint
			}
			line(label, who+": "+limits(u, o.Limits))
		}
		if u.Mode == "reject" {
			line("mode", "reject: answer 429 at once when over quota")
		} else {
			line("mode", fmt.Sprintf("queue: hold up to %s, at most %d requests per key", short(u.MaxWait), u.MaxQueue))
		}
		th := u.Throttle
		line("throttle", throttleRules(th))
		answer := "rewritten to 429 + Retry-After"
		if th.Rewrite != nil && !*th.Rewrite {
			answer = "passed on as the upstream sent it"
		}
		line("", fmt.Sprintf("%s; wait %s when it names none, any wait kept within %s..%s",
			answer, short(th.DefaultWait), short(th.MinWait), short(th.MaxWait)))
		line("retry", retry(th.Retry))
		learn := u.Learn.Mode
		switch learn {
		case "tighten":
			learn += ": reported windows apply on top of the limits"
		case "replace":
			learn += ": reported windows replace the limits while known"
		case "off":
			learn += ": quota headers are ignored"
		}
		if u.Learn.Mode != "off" && u.Learn.Threshold != nil {
			learn += fmt.Sprintf("; %s of a reported quota kept unused", strconv.FormatFloat(*u.Learn.Threshold*100, 'f', -1, 64)+"%")
		}
		line("learn", learn)
		tw.Flush()
	}
}

// clients says who may use the proxy.
func clients(cfg *config.Config) string {
	var who []string
	if len(cfg.Clients) > 0 {
		nets := make([]string, len(cfg.Clients))
		for i, p := range cfg.Clients {
			nets[i] = p.String()
		}
		who = append(who, "from "+strings.Join(nets, ", "))
	}
	if n := len(cfg.ClientTokens); n > 0 {
		who = append(who, fmt.Sprintf("with one of %d client tokens", n))
	}
	if len(who) == 0 {
		return "any client that can connect"
	}
	return strings.Join(who, ", ")
}

// egress says where hosts no upstream claims may be reached.
func egress(e config.Egress) string {
	parts := []string{"public addresses"}
	for _, r := range e.Allow {
		var what []string
		for _, c := range r.CIDRs {
			what = append(what, c.String())
		}
		what = append(what, r.Hosts...)
		rule := strings.Join(what, ", ")
		switch len(r.Ports) {
		case 0:
		case 1:
			rule += " on port " + ints(r.Ports)
		default:
			rule += " on ports " + ints(r.Ports)
		}
		parts = append(parts, rule)
	}
	return strings.Join(parts, "; ")
}

// limits shows a list of limits and the margin each window is widened by.
func limits(u *config.Upstream, ls []config.Limit) string {
	if len(ls) == 0 {
		return "none"
	}
	var shown, margins []string
	for _, l := range ls {
		shown = append(shown, config.Limits([]config.Limit{l})[0].String())
		margins = append(margins, short(config.Duration(u.Margin(l.Window))))
	}
	return strings.Join(shown, ", ") + " (windows widened by " + strings.Join(margins, ", ") + ")"
}

func throttleRules(th config.Throttle) string {
	if th.Rules == nil {
		return "default rules"
	}
	r := th.Rules
	var parts []string
	if len(r.Statuses) > 0 {
		parts = append(parts, ints(r.Statuses))
	}
	if len(r.MarkerStatuses) > 0 {
		parts = append(parts, ints(r.MarkerStatuses)+fmt.Sprintf(" with a marker (%d in the body, %d in headers)", len(r.BodyMarkers), len(r.HeaderMarkers)))
	}
	if len(r.RetryAfterStatuses) > 0 {
		parts = append(parts, ints(r.RetryAfterStatuses)+" with Retry-After")
	}
	for _, f := range r.BodyFields {
		parts = append(parts, fmt.Sprintf("body %s in %s, any status", f.Path, strings.Join(f.Values, "|")))
	}
	s := "a throttle is " + strings.Join(parts, "; ")
	if len(r.OverloadStatuses) > 0 {
		s += "; " + ints(r.OverloadStatuses) + " is overload"
	}
	return s
}

func retry(r config.Retry) string {
	if r.Enabled != nil && !*r.Enabled {
		return "off"
	}
	what := strings.Join(r.Methods, ", ")
	if r.AnyMethod {
		what = "every method"
	} else if r.IdempotencyKey == nil || *r.IdempotencyKey {
		what += ", and requests with an Idempotency-Key"
	}
	return fmt.Sprintf("%s; up to %d attempts; bodies up to %d bytes kept for a replay", what, r.MaxAttempts, r.MaxBody)
}

func ints(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ", ")
}

// short writes a duration without its zero units: 1h, 1m30s, 600ms.
func short(d config.Duration) string {
	s := time.Duration(d).String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}
