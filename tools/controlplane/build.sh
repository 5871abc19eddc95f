#!/usr/bin/env bash
# Builds the real control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kwok) from source at the versions pinned in go.mod, once: the binaries go to a cache keyed by
# everything that determines them, and target/controlplane/bin links to it. A second run costs
# nothing. Prints the binaries' directory. Every step names itself and, on failure, the command
# to rerun it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

fail() {
    echo "make controlplane: $1 failed (exit $2)." >&2
    echo "  rerun it with: cd tools/controlplane && $3" >&2
    echo "  (the Go module proxy must be reachable; GOPROXY=$(go env GOPROXY 2>/dev/null || echo '?'))" >&2
    exit 1
}

command -v go >/dev/null || {
    echo "make controlplane: Go is not installed; install Go >= $(awk '/^go /{print $2}' "$here/go.mod") and rerun make controlplane" >&2
    exit 1
}

k8s_version=$(awk '$1 == "k8s.io/kubernetes" {print $2}' "$here/go.mod")
key=$( (cat "$here/go.mod" "$here/go.sum" "$here/build.sh" "$here"/cmd/*/*.go; go version; go env GOOS GOARCH) | sha256sum | cut -c1-16)
cache=${WASMOP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wasmop}/controlplane/$k8s_version-$key
link=$root/target/controlplane/bin

have_all() { for b in "${binaries[@]}"; do [ -x "$1/$b" ] || return 1; done; }
have_cache() { have_all "$1" && [ -s "$1/kwok-stages.yaml" ]; }

if ! have_cache "$cache/bin"; then
    echo "make controlplane: building Kubernetes $k8s_version, etcd and kwok from source into $cache" >&2
    echo "  (first build about 20 minutes on 2 cores; later runs reuse the cache)" >&2
    cd "$here"
    echo "make controlplane: step 1/2: go mod download" >&2
    timeout 1800 go mod download || fail "step 1/2 (go mod download)" $? "go mod download"
    mkdir -p "$(dirname "$cache")"
    tmp=$(mktemp -d "$(dirname "$cache")/tmp.XXXXXX")
    minor=${k8s_version#v1.}
    minor=${minor%%.*}
    ldflags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    echo "make controlplane: step 2/2: go build ${binaries[*]}" >&2
    timeout 5400 go build -trimpath -ldflags "$ldflags" -o "$tmp/" tool \
        || fail "step 2/2 (go build)" $? "go build -trimpath -ldflags '$ldflags' -o /tmp/cp/ tool"
    have_all "$tmp" || { echo "make controlplane: go build did not produce all of ${binaries[*]} in $tmp" >&2; exit 1; }
    # kwok has no built-in behaviour: its stages (node Ready and heartbeat; pod Ready, complete,
    # delete) come from the kwok module itself, at the pinned version.
    kwok_dir=$(go list -m -f '{{.Dir}}' sigs.k8s.io/kwok) || fail "locating the kwok module" $? "go list -m sigs.k8s.io/kwok"
    for stage in node/fast/node-initialize node/heartbeat/node-heartbeat pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do
        echo "---"
        cat "$kwok_dir/kustomize/stage/$stage.yaml"
    done > "$tmp/kwok-stages.yaml"
    mkdir -p "$cache"
    rm -rf "$cache/bin"
    mv "$tmp" "$cache/bin"
fi
mkdir -p "$(dirname "$link")"
ln -sfn "$cache/bin" "$link"
echo "$link"
