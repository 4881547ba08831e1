// Runs one vendor's real SDK through the proxy, as its documentation says
// to use a proxy, and sends N requests at once; proxy/sdk_test.go
// runs it against a local stand-in of the vendor and counts what the proxy
// and the stand-in saw.
//
//   node run.mjs SDK N      # SDK: octokit, stripe or openai
//
// Environment: PROXY_URL (the proxy), BASE_HOST (the stand-in's host name,
// intercepted by the proxy), NODE_EXTRA_CA_CERTS (the proxy's CA).
// It prints one JSON line: {"ok": requests that succeeded, "errors": [...],
// "rateLimitHandlerCalls": octokit's onRateLimit calls, "throttles": the
// wait headers of each 429 a fetch-based SDK got} and exits 1 unless every
// request succeeded.
import { ProxyAgent, fetch as undiciFetch } from "undici";

const [sdk, nArg] = process.argv.slice(2);
const n = Number(nArg);
const proxyURL = process.env.PROXY_URL;
const host = process.env.BASE_HOST;
if (!sdk || !n || !proxyURL || !host) {
  console.error("usage: PROXY_URL=... BASE_HOST=... node run.mjs octokit|stripe|openai N");
  process.exit(2);
}

const result = { ok: 0, errors: [], rateLimitHandlerCalls: 0, throttles: [] };

// recordingFetch is undici's fetch, noting the wait headers of every 429
// the SDK is given.
async function recordingFetch(url, init) {
  const resp = await undiciFetch(url, init);
  if (resp.status === 429) {
    const h = (name) => resp.headers.get(name);
    result.throttles.push({ retryAfter: h("retry-after"), retryAfterMs: h("retry-after-ms"), remaining: h("x-ratelimit-remaining"), reset: h("x-ratelimit-reset") });
  }
  return resp;
}

// fetch through the proxy: undici's ProxyAgent as the dispatcher.
const dispatcher = new ProxyAgent(proxyURL);
const proxiedFetch = (url, init = {}) => recordingFetch(url, { ...init, dispatcher });

async function octokit() {
  const { Octokit } = await import("@octokit/rest");
  const { throttling } = await import("@octokit/plugin-throttling");
  const MyOctokit = Octokit.plugin(throttling);
  const client = new MyOctokit({
    auth: "ghp_sdktest",
    baseUrl: `https://${host}`,
    request: { fetch: proxiedFetch },
    throttle: {
      // As GitHub's documentation shows: retry a few times.
      onRateLimit: (retryAfter, options, _octokit, retryCount) => {
        result.rateLimitHandlerCalls++;
        return retryCount < 3;
      },
      onSecondaryRateLimit: (retryAfter, options, _octokit, retryCount) => {
        result.rateLimitHandlerCalls++;
        return retryCount < 3;
      },
    },
  });
  return () => client.rest.users.getAuthenticated();
}

async function stripe() {
  const { default: Stripe } = await import("stripe");
  const { HttpsProxyAgent } = await import("https-proxy-agent");
  const client = new Stripe("sk_live_sdktest", {
    host,
    port: 443,
    protocol: "https",
    httpAgent: new HttpsProxyAgent(proxyURL),
    maxNetworkRetries: 4, // it reads no Retry-After: enough of its own backoff (0.5, 1, 2, 4 s) to outlast a 2 s Retry-After
  });
  return () => client.customers.retrieve("cus_sdktest");
}

async function openai() {
  const { default: OpenAI } = await import("openai");
  const client = new OpenAI({
    apiKey: "sk-sdktest",
    baseURL: `https://${host}/v1`,
    // The SDK's documented way to use a proxy: undici's fetch and ProxyAgent.
    fetch: recordingFetch,
    fetchOptions: { dispatcher },
    maxRetries: 2, // the SDK's default
  });
  return () => client.models.list();
}

const clients = { octokit, stripe, openai };
if (!clients[sdk]) {
  console.error(`unknown SDK ${sdk}`);
  process.exit(2);
}
const call = await clients[sdk]();
await Promise.all(
  Array.from({ length: n }, async (_, i) => {
    try {
      await call();
      result.ok++;
    } catch (err) {
      result.errors.push(`request ${i}: ${err.status ?? ""} ${err.message}`);
    }
  }),
);
console.log(JSON.stringify(result));
await dispatcher.close();
process.exit(result.ok === n ? 0 : 1);
