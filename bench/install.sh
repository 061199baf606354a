#!/usr/bin/env bash
# Installs what the benchmark needs beyond the project's own dependencies:
# the vegeta load generator (built with `go install`), the peer gateways
# (bench/peers/install.sh), and checks for redis-server and redis-benchmark.
# Idempotent: what is installed already is skipped.
#
# Usage: bash bench/install.sh [--skip-peers]
#   --skip-peers   Install only vegeta and check the Redis tools. The peer gateways
#                  are left out, so Python 3 with venv and access to the npm registry
#                  and PyPI are not needed. `npm run bench -- --skip-peers` passes it.
#
# Environment:
#   TOLLGATE_CACHE   cache root (default: $HOME/.cache/tollgate); vegeta goes to its bin/ folder
#   VEGETA_VERSION   vegeta module version (default below)
set -euo pipefail

SKIP_PEERS=false
for arg in "$@"; do
  case "$arg" in
    --skip-peers) SKIP_PEERS=true ;;
    *)
      echo "bench/install.sh: unknown argument \"$arg\"; the only one is --skip-peers" >&2
      exit 2
      ;;
  esac
done

VEGETA_VERSION="${VEGETA_VERSION:-v12.12.0}"
CACHE="${TOLLGATE_CACHE:-$HOME/.cache/tollgate}"
BIN_DIR="$CACHE/bin"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

installed_vegeta_version() {
  [ -x "$BIN_DIR/vegeta" ] || return 0
  command -v go >/dev/null || { echo unknown; return 0; }
  go version -m "$BIN_DIR/vegeta" | awk '$1 == "mod" { print $3 }'
}

install_vegeta() {
  local installed
  installed="$(installed_vegeta_version)"
  if [ "$installed" = "$VEGETA_VERSION" ] || { [ "$installed" = unknown ] && [ -x "$BIN_DIR/vegeta" ]; }; then
    echo "vegeta: $VEGETA_VERSION already installed in $BIN_DIR, skipping"
    return
  fi
  if ! command -v go >/dev/null; then
    echo "vegeta: Go is needed to build it and is not on PATH; install Go 1.22 or newer, or put a vegeta binary in $BIN_DIR" >&2
    exit 1
  fi
  echo "vegeta: building github.com/tsenart/vegeta/v12@$VEGETA_VERSION into $BIN_DIR"
  mkdir -p "$BIN_DIR"
  GOBIN="$BIN_DIR" go install "github.com/tsenart/vegeta/v12@$VEGETA_VERSION"
}

check_redis_tools() {
  local missing=()
  for tool in redis-server redis-benchmark redis-cli; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "redis: ${missing[*]} not found on PATH; install them with: apt-get install redis-server redis-tools" >&2
    exit 1
  fi
  echo "redis: $(redis-server --version | awk '{ sub(/^v=/, "", $3); print $3 }'), redis-benchmark and redis-cli found"
}

install_vegeta
check_redis_tools
if [ "$SKIP_PEERS" = true ]; then
  echo "peers: skipped (--skip-peers)"
else
  bash "$HERE/peers/install.sh"
fi
