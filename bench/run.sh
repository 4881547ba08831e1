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
# bench/BENCHMARKS.smoke.md in smoke mode); NO_INSTALL=1 to skip apt-get
# (scripts/deps.sh);
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

# Peers from Debian, through the project's one install step (NO_INSTALL=1
# skips it; the suite then reports the rows of a missing peer as not measured).
bash scripts/deps.sh bench
command -v wrk >/dev/null || { echo "bench: wrk is required (NO_INSTALL=1 left it out)" >&2; exit 1; }
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
