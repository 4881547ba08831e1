#!/usr/bin/env bash
# ratelimit-proxy benchmark suite: installs the peers when missing, builds
# the proxy and the suite's programs, runs every row on loopback, prints the
# report and writes BENCHMARKS.md.
#
#   bash bench/run.sh             # full run (~12 minutes on 2 cores)
#   SMOKE=1 bash bench/run.sh     # a tiny version of every row (CI, < 60 s once built)
#   ROWS=advice OUT=/tmp/advice.md bash bench/run.sh   # one row group only
#
# Environment: SMOKE=1; OUT=path (default BENCHMARKS.md, or
# bench/BENCHMARKS.smoke.md in smoke mode); NO_INSTALL=1 to skip apt-get;
# ROWS=overhead,precision,scale,advice (the default: all of them).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

if [[ "${SMOKE:-}" == 1 ]]; then
  OUT=${OUT:-$ROOT/bench/BENCHMARKS.smoke.md}
  MODE=(-smoke)
else
  OUT=${OUT:-$ROOT/BENCHMARKS.md}
  MODE=()
fi

# Peers from Debian. mitmproxy is optional: the suite says so if it is absent.
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx-light)
command -v tinyproxy >/dev/null || need+=(tinyproxy)
command -v mitmdump >/dev/null || need+=(mitmproxy)
if ((${#need[@]})) && [[ "${NO_INSTALL:-}" != 1 ]]; then
  SUDO=""
  [[ $(id -u) == 0 ]] || SUDO="sudo"
  echo "bench: installing ${need[*]}" >&2
  $SUDO apt-get update -qq >/dev/null
  for p in "${need[@]}"; do
    if apt-cache policy "$p" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$p" >/dev/null ||
        echo "bench: could not install $p; its rows will be reported as not measured" >&2
    else
      echo "bench: $p is not available from apt; its rows will be reported as not measured" >&2
    fi
  done
fi
command -v wrk >/dev/null || { echo "bench: wrk is required (apt-get install wrk)" >&2; exit 1; }
# Debian starts nginx as a service on install; the suite runs its own.

BIN=$(mktemp -d /tmp/rlp-bench-bin.XXXXXX)
trap 'rm -rf "$BIN"' EXIT
echo "bench: building into $BIN" >&2
go build -o "$BIN/" ./cmd/ratelimit-proxy ./bench/cmd/upstream ./bench/cmd/goproxy ./bench/cmd/loadgen ./bench/cmd/suite
go test -c -o "$BIN/quotabench.test" ./bench/quotabench

# 10k held connections need file descriptors on both sides.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [[ -n "${ROWS:-}" ]]; then
  MODE+=(-rows "$ROWS")
fi
"$BIN/suite" -bin "$BIN" -wrk-script "$ROOT/bench/wrk/proxy.lua" -out "$OUT" "${MODE[@]}"
