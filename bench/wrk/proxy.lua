-- wrk script of the benchmark suite. Environment:
--   WRK_TARGET  absolute URL to request through a forward proxy (wrk then
--               connects to the proxy given on the command line); unset: direct
--   WRK_CLOSE   "1": send "Connection: close" (a new connection per request)
-- done() prints one JSON line with the counts and latency percentiles.
local target = os.getenv("WRK_TARGET")
if target and target ~= "" then
  wrk.path = target
  wrk.headers["Host"] = target:match("^https?://([^/]+)")
end
wrk.headers["X-API-Key"] = "bench-key-1"
if os.getenv("WRK_CLOSE") == "1" then
  wrk.headers["Connection"] = "close"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"p50_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
