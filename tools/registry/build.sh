#!/usr/bin/env bash
# Builds the OCI registry tools (crane, whose `crane registry serve` is a real OCI registry, and
# oras) from source at the versions pinned in go.mod, once: the binaries go to a cache keyed by
# everything that determines them, and target/registry/bin links to it. A second run costs
# nothing. Prints the binaries' directory. Every step names itself and, on failure, the command
# to rerun it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
binaries=(crane oras)

fail() {
    echo "make registry: $1 failed (exit $2)." >&2
    echo "  rerun it with: cd tools/registry && $3" >&2
    echo "  (the Go module proxy must be reachable; GOPROXY=$(go env GOPROXY 2>/dev/null || echo '?'))" >&2
    exit 1
}

command -v go >/dev/null || {
    echo "make registry: Go is not installed; install Go >= $(awk '/^go /{print $2}' "$here/go.mod") and rerun make registry" >&2
    exit 1
}

crane_version=$(awk '$1 == "github.com/google/go-containerregistry" {print $2}' "$here/go.mod")
oras_version=$(awk '$1 == "oras.land/oras" {print $2}' "$here/go.mod")
key=$( (cat "$here/go.mod" "$here/go.sum" "$here/build.sh"; go version; go env GOOS GOARCH) | sha256sum | cut -c1-16)
cache=${WASMOP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wasmop}/registry/$key
link=$root/target/registry/bin

have_all() { for b in "${binaries[@]}"; do [ -x "$1/$b" ] || return 1; done; }

if ! have_all "$cache/bin"; then
    echo "make registry: building crane $crane_version and oras $oras_version from source into $cache" >&2
    echo "  (the first build takes a minute or two on 2 cores; later runs reuse the cache)" >&2
    cd "$here"
    echo "make registry: step 1/2: go mod download" >&2
    timeout 1800 go mod download || fail "step 1/2 (go mod download)" $? "go mod download"
    mkdir -p "$(dirname "$cache")"
    tmp=$(mktemp -d "$(dirname "$cache")/tmp.XXXXXX")
    # Built as tools of this module, crane would report "(devel)"; give it its release.
    ldflags="-s -w -X github.com/google/go-containerregistry/cmd/crane/cmd.Version=$crane_version"
    echo "make registry: step 2/2: go build ${binaries[*]}" >&2
    timeout 3600 go build -trimpath -ldflags "$ldflags" -o "$tmp/" tool \
        || fail "step 2/2 (go build)" $? "go build -trimpath -ldflags '$ldflags' -o /tmp/registry/ tool"
    have_all "$tmp" || { echo "make registry: go build did not produce all of ${binaries[*]} in $tmp" >&2; exit 1; }
    mkdir -p "$cache"
    rm -rf "$cache/bin"
    mv "$tmp" "$cache/bin"
fi
mkdir -p "$(dirname "$link")"
ln -sfn "$cache/bin" "$link"
echo "$link"
