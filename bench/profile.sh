#!/usr/bin/env bash
# CPU-profiles ratelimit-proxy (in-process, bench/cmd/proxyprof, at log
# level info or warn, limits that never bind) or the bare goproxy
# (bench/cmd/goproxy) under closed-loop load: plain HTTP keep-alive driven by
# wrk, or intercepted HTTPS keep-alive driven by loadgen. Prints the top of
# the profile, flat and cumulative.
#
#   bash bench/profile.sh [info|warn|goproxy] [http|https]
#   NEWCONN=1 CONC=32 bash bench/profile.sh info https   # a new TLS connection per request
set -euo pipefail
cd "$(dirname "$0")/.."
LEVEL=${1:-info}
SCHEME=${2:-http}
DUR=${DUR:-8}
W=$(mktemp -d /tmp/rlp-prof.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
go build -o "$W/" ./bench/cmd/upstream ./bench/cmd/proxyprof ./bench/cmd/loadgen ./bench/cmd/goproxy
"$W/upstream" -ca-out "$W/up-ca.pem" >"$W/up.json" &
pids+=($!)
for _ in $(seq 50); do [[ -s "$W/up.json" ]] && break; sleep 0.1; done
HTTP=$(sed -E 's/.*"http":"([^"]+)".*/\1/' "$W/up.json")
HTTPS=$(sed -E 's/.*"https":"([^"]+)".*/\1/' "$W/up.json")
cat >"$W/config.yaml" <<YAML
listen: 127.0.0.1:0
data_dir: $W/data
upstream_roots: [$W/up-ca.pem]
log: {level: $LEVEL}
upstreams:
  - name: bench-http
    hosts: ["$HTTP"]
    identity: [{header: X-API-Key}]
    limits: [1000000/1s, 10000000/1m]
  - name: bench-https
    hosts: ["$HTTPS"]
    identity: [{header: X-API-Key}]
    limits: [1000000/1s, 10000000/1m]
YAML
PORT=$((20000 + RANDOM % 20000))
if [[ $LEVEL == goproxy ]]; then
  BIN="$W/goproxy"
  "$BIN" -listen "127.0.0.1:$PORT" -ca-out "$W/proxy-ca.pem" -upstream-ca "$W/up-ca.pem" -pool 512 -cpuprofile "$W/cpu.prof" >/dev/null &
  pids+=($!)
  CA="$W/proxy-ca.pem"
else
  BIN="$W/proxyprof"
  "$BIN" -config "$W/config.yaml" -listen "127.0.0.1:$PORT" -d "$((DUR + 2))s" -cpuprofile "$W/cpu.prof" &
  pids+=($!)
  CA="$W/data/ca.pem"
fi
sleep 1
if [[ $SCHEME == http ]]; then
  WRK_TARGET="http://$HTTP/" wrk -t1 -c64 "-d${DUR}s" -s bench/wrk/proxy.lua "http://127.0.0.1:$PORT" | tail -1
else
  "$W/loadgen" -url "https://$HTTPS/" -proxy "http://127.0.0.1:$PORT" -ca "$CA" -c "${CONC:-64}" -d "${DUR}s" -warmup 0 ${NEWCONN:+-newconn}
fi
if [[ $LEVEL == goproxy ]]; then kill -TERM "${pids[1]}"; fi
wait "${pids[1]}" || true
go tool pprof -top -nodecount=40 "$BIN" "$W/cpu.prof" 2>/dev/null | head -50
echo "--- cumulative"
go tool pprof -top -cum -nodecount=40 "$BIN" "$W/cpu.prof" 2>/dev/null | sed -n 6,50p
echo "profile: $W/cpu.prof (binary $BIN)"
