#!/usr/bin/env bash
# The one install step of ratelimit-proxy: what `make test`, `make bench` and
# CI need beyond Go, installed from Debian's packages when missing.
#
#   bash scripts/deps.sh GROUP...       # groups: test, bench (default: test bench)
#
# Each group lists the commands it needs and the Debian package that brings
# each one. Only what is missing is installed, with `apt-get install` (as root,
# or through sudo), and the step fails unless every command is there after.
# A new dependency is one line in need_GROUP below.
#
# Environment:
#   NO_INSTALL=1  install nothing: name what is missing and go on (the tests
#                 that need it skip, saying so). Under CI=true a missing
#                 command is a failure, never a skip.
#   APT_GET       the installer to run (default apt-get); tests stub it.
set -euo pipefail

# need_GROUP prints "command package" pairs.
need_test() {
  echo "curl curl"
}
need_bench() {
  echo "wrk wrk"
  echo "nginx nginx-light"
  echo "tinyproxy tinyproxy"
  echo "mitmdump mitmproxy"
}

say() { echo "deps: $*" >&2; }

groups=("$@")
((${#groups[@]})) || groups=(test bench)

missing_cmds=()
missing_pkgs=()
for g in "${groups[@]}"; do
  if ! declare -F "need_$g" >/dev/null; then
    say "unknown group \"$g\" (known: test, bench)"
    exit 2
  fi
  while read -r cmd pkg; do
    command -v "$cmd" >/dev/null 2>&1 && continue
    missing_cmds+=("$cmd")
    # One package can bring several commands: name it once.
    [[ " ${missing_pkgs[*]} " == *" $pkg "* ]] || missing_pkgs+=("$pkg")
  done < <("need_$g")
done

if ((${#missing_cmds[@]} == 0)); then
  say "everything needed for ${groups[*]} is installed"
  exit 0
fi

if [[ "${NO_INSTALL:-}" == 1 ]]; then
  if [[ "${CI:-}" == true ]]; then
    say "missing ${missing_cmds[*]} (packages ${missing_pkgs[*]}), and NO_INSTALL=1 under CI=true: a skip would hide a broken install step"
    exit 1
  fi
  say "NO_INSTALL=1: not installing ${missing_pkgs[*]}; what needs ${missing_cmds[*]} will be skipped"
  exit 0
fi

apt_get=${APT_GET:-apt-get}
sudo=()
if [[ $(id -u) != 0 ]]; then
  if ! command -v sudo >/dev/null 2>&1; then
    say "missing ${missing_cmds[*]}: installing ${missing_pkgs[*]} needs root or sudo (or run with NO_INSTALL=1)"
    exit 1
  fi
  sudo=(sudo)
fi

say "installing with $apt_get: ${missing_pkgs[*]} (for ${missing_cmds[*]})"
if ! "${sudo[@]}" "$apt_get" update -qq >/dev/null; then
  say "$apt_get update failed"
  exit 1
fi
if ! DEBIAN_FRONTEND=noninteractive "${sudo[@]}" "$apt_get" install -y -qq --no-install-recommends "${missing_pkgs[@]}" >/dev/null; then
  say "$apt_get install ${missing_pkgs[*]} failed"
  exit 1
fi
still=()
for cmd in "${missing_cmds[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || still+=("$cmd")
done
if ((${#still[@]})); then
  say "installed ${missing_pkgs[*]}, but ${still[*]} is still not on PATH"
  exit 1
fi
say "installed ${missing_pkgs[*]}"
