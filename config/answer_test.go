package config

import (
	"reflect"
	"strings"
	"testing"
)

func TestProfilesCarryWhatTheirSDKsLookFor(t *testing.T) {
	tests := []struct {
		profile string
		headers map[string]string
		body    map[string]any
	}{
		{"github", map[string]string{"x-ratelimit-remaining": "0", "x-ratelimit-reset": "{reset}"}, nil},
		{"stripe", map[string]string{"Stripe-Should-Retry": "true"}, nil},
		{"openai", map[string]string{"retry-after-ms": "{retry_after_ms}"}, nil},
		{"anthropic", map[string]string{"retry-after-ms": "{retry_after_ms}"}, nil},
		{"clarifai", nil, map[string]any{"status": map[string]any{"code": "CONN_THROTTLED", "description": "Making too many requests", "details": "{message}"}}},
		{"closient", nil, map[string]any{"error": map[string]any{"status": 429, "details": map[string]any{"retry_after_seconds": "{retry_after}"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.profile, func(t *testing.T) {
			cfg, err := Parse("p.yaml", []byte("upstreams:\n  - profile: "+tt.profile+"\n"))
			if err != nil {
				t.Fatal(err)
			}
			a := cfg.Upstreams[0].Answer
			if !reflect.DeepEqual(a.Headers, tt.headers) || !reflect.DeepEqual(a.Body, tt.body) {
				t.Errorf("answer = %#v\nwant headers %#v body %#v", a, tt.headers, tt.body)
			}
		})
	}
}

func TestAnswerFieldsOverrideTheProfilesByName(t *testing.T) {
	cfg, err := Parse("p.yaml", []byte(`upstreams:
  - profile: github
    answer:
      headers:
        x-ratelimit-reset: ""
        X-Extra: "wait {retry_after}s"
  - profile: clarifai
    answer:
      body:
        status: {code: 11005, description: Making too many requests}
`))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"x-ratelimit-remaining": "0", "x-ratelimit-reset": "", "X-Extra": "wait {retry_after}s"}
	if got := cfg.Upstreams[0].Answer.Headers; !reflect.DeepEqual(got, want) {
		t.Errorf("github headers %v, want %v", got, want)
	}
	wantBody := map[string]any{"status": map[string]any{"code": 11005, "description": "Making too many requests"}}
	if got := cfg.Upstreams[1].Answer.Body; !reflect.DeepEqual(got, wantBody) {
		t.Errorf("clarifai body %#v, want %#v", got, wantBody)
	}
}

func TestBadAnswersNameFileLineAndField(t *testing.T) {
	head := "upstreams:\n  - name: a\n    hosts: [a]\n    answer:\n"
	tests := []struct {
		name, yaml string
		want       []string
	}{
		{"unknown placeholder", head + "      headers:\n        x-wait: \"{seconds}\"\n",
			[]string{"bad.yaml:6:", "upstreams[0].answer.headers.x-wait", "unknown placeholder {seconds}", "{retry_after_ms}"}},
		{"unclosed placeholder", head + "      headers:\n        x-wait: \"{retry_after\"\n",
			[]string{"bad.yaml:6:", "upstreams[0].answer.headers.x-wait", "without its '}'"}},
		{"the proxy's own header", head + "      headers:\n        Retry-After: \"5\"\n",
			[]string{"bad.yaml:6:", "upstreams[0].answer.headers.Retry-After", "set by the proxy"}},
		{"a hop-by-hop header", head + "      headers:\n        Connection: close\n",
			[]string{"bad.yaml:6:", "upstreams[0].answer.headers.Connection"}},
		{"not a header name", head + "      headers:\n        \"x wait\": \"1\"\n",
			[]string{"bad.yaml:6:", "upstreams[0].answer.headers.x wait", "not a valid header name"}},
		{"a line break in a value", head + "      headers:\n        x-wait: \"1\\r\\nSet-Cookie: a=b\"\n",
			[]string{"bad.yaml:6:", "upstreams[0].answer.headers.x-wait", "control characters"}},
		{"headers not a mapping", head + "      headers: [a, b]\n",
			[]string{"bad.yaml:5:", "upstreams[0].answer.headers", "want a mapping"}},
		{"a header value not a string", head + "      headers:\n        x-wait: [1]\n",
			[]string{"bad.yaml:6:", "upstreams[0].answer.headers.x-wait", "want a string"}},
		{"the proxy's error code", head + "      body:\n        error: {code: THROTTLED}\n",
			[]string{"bad.yaml:6:", "upstreams[0].answer.body.error.code", "set by the proxy"}},
		{"error not a mapping", head + "      body:\n        error: throttled\n",
			[]string{"bad.yaml:6:", "upstreams[0].answer.body.error", "want a mapping"}},
		{"bad template deep in the body", head + "      body:\n        status:\n          details: [\"ok\", \"{wait}\"]\n",
			[]string{"bad.yaml:7:", "upstreams[0].answer.body.status.details[1]", "unknown placeholder {wait}"}},
		{"alias in the body", head + "      body:\n        a: &x {b: 1}\n        c: *x\n",
			[]string{"bad.yaml:7:", "upstreams[0].answer.body.c", "aliases are not supported"}},
		{"unknown answer field", head + "      header:\n        x: y\n",
			[]string{"bad.yaml:5:", "upstreams[0].answer.header", "unknown field"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("bad.yaml", []byte(tt.yaml))
			if err == nil {
				t.Fatal("Parse accepted the config")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestParseTemplate(t *testing.T) {
	tests := []struct {
		in   string
		want []TemplatePart
		err  bool
	}{
		{"", nil, false},
		{"true", []TemplatePart{{Text: "true"}}, false},
		{"{reset}", []TemplatePart{{Placeholder: "reset"}}, false},
		{"wait {retry_after}s ({retry_after_ms} ms): {message}", []TemplatePart{
			{Text: "wait "}, {Placeholder: "retry_after"}, {Text: "s ("}, {Placeholder: "retry_after_ms"},
			{Text: " ms): "}, {Placeholder: "message"},
		}, false},
		{"{}", nil, true},
		{"{reset", nil, true},
		{"reset}", nil, true},
		{"{{reset}}", nil, true},
		{`{"json": 1}`, nil, true},
	}
	for _, tt := range tests {
		got, err := ParseTemplate(tt.in)
		if (err != nil) != tt.err || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParseTemplate(%q) = %#v, %v; want %#v, error %v", tt.in, got, err, tt.want, tt.err)
		}
	}
}
