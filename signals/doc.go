// Package signals reads the rate-limit signals in an upstream HTTP response.
//
// It has three pure functions, none of which does I/O, keeps state or
// panics; the local time is passed in, so they are deterministic:
//
//   - Classify says whether a response is a throttle and of what kind
//     (KindQuota, KindOverload, KindNotQuota), following per-upstream Rules;
//   - Wait says how long to wait before retrying, within Bounds, and which
//     signal it came from;
//   - Quota returns the quota windows the upstream reports (limit,
//     remaining, reset, period, bucket), for an informed governor.
//
// Bodies are read only up to MaxBody bytes (64 KiB) and may be JSON, text,
// truncated or garbage. Header names match ignoring case. Values that do
// not parse are ignored, never guessed at.
//
// # Throttles recognised by DefaultRules
//
//   - any 429 (Clari, Closient, OpenAI, Anthropic, Stripe, Shopify REST,
//     HubSpot, Slack, Discord, X, Zendesk, Jira, Notion, Twilio, Google
//     RESOURCE_EXHAUSTED), except bodies with lock_timeout (Stripe object
//     contention) or insufficient_quota (OpenAI billing): KindNotQuota;
//   - 400 or 403 with a marker: Clarabridge Engage rate_limit_reached;
//     GitHub "secondary rate limit", "API rate limit exceeded" or
//     X-RateLimit-Remaining: 0; Google rateLimitExceeded,
//     userRateLimitExceeded, dailyLimitExceeded; Salesforce
//     REQUEST_LIMIT_EXCEEDED; rate_limit_error (Anthropic, old Stripe);
//   - any status, 200 included, whose JSON body has Clarifai status.code
//     CONN_THROTTLED/11005, CONN_EXCEED_HOURLY_LIMIT/11003,
//     CONN_EXCEED_MONTHLY_LIMIT/11004 or CONN_EXCEEDS_LIMITS/11006, or
//     Shopify GraphQL errors[].extensions.code THROTTLED;
//   - 503 with a marker (KindQuota) or with Retry-After (KindOverload);
//   - 529 (Anthropic, Notion): KindOverload, never learned from.
//
// # Wait order
//
// Wait takes the first usable signal of:
//
//  1. Retry-After (seconds, fractional allowed, or HTTP-date);
//  2. retry-after-ms;
//  3. RateLimit-Reset (delta seconds; Beta- prefix for Jira);
//  4. RateLimit (or Beta-RateLimit), draft -07 `limit=100, remaining=0, reset=30` or draft -08
//     on `"p";r=0;t=30` (largest t among exhausted items);
//  5. X-RateLimit-Reset, then x-rate-limit-reset: a bare number above 1e12
//     is epoch ms, above 1e9 epoch seconds, else delta seconds; RFC 3339 or
//     ISO 8601 times also;
//  6. X-RateLimit-Reset-After (float seconds, Discord);
//  7. x-ratelimit-reset-requests/-tokens duration strings (OpenAI);
//  8. anthropic-ratelimit-*-reset RFC 3339 times (Anthropic);
//  9. JSON body retry_after_seconds (Closient), retry_after (Discord),
//     retryDelay (Google RetryInfo "35s").
//
// Resets (3 to 8) count only for exhausted windows: a reset whose Remaining
// header is above zero is not a wait (a GitHub secondary limit carries the
// primary window's reset, up to an hour away). With several exhausted
// windows the largest reset wins. Absolute times become waits from now:
// t-now when the local clock agrees with the response Date header (Date <=
// now < Date+1s), exact; t-Date when it does not, which corrects a skewed
// upstream clock and never ends before the upstream's own t. Absurd
// values (negative, past, 1e999, years) are clamped to the Bounds.
//
// # Quota dialects
//
// IETF RateLimit-Policy (`300;w=60, 10000;w=86400` and `"p";q=100;w=60`),
// RateLimit (-07 and -08 forms), RateLimit-Limit/-Remaining/-Reset and the
// Beta-RateLimit forms; X-RateLimit-* (Closient, Clarabridge with
// X-RateLimit-Time, GitHub with X-RateLimit-Resource, Discord with
// X-RateLimit-Bucket, Jira); x-rate-limit-* (X) and X-Rate-Limit (Zendesk);
// OpenAI x-ratelimit-*-{requests,tokens}; Anthropic
// anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-*;
// Shopify X-Shopify-Shop-Api-Call-Limit; Salesforce Sforce-Limit-Info;
// HubSpot X-HubSpot-RateLimit-*. OpenAI, Anthropic and Shopify windows are
// refilling buckets (Window.Refill): their reset is the time to full, not
// the time to the next unit.
package signals
