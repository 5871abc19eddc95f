#!/usr/bin/env bash
# Builds the Go tools that tools/SET/go.mod pins (its `tool` lines) from source, once: the
# binaries go to a cache keyed by everything that determines them (go.mod, go.sum, the build
# scripts, the Go version and platform), and target/SET/bin links to it. A second run costs
# nothing. Prints the binaries' directory. Every step names itself and, on failure, the command
# to rerun it.
#
# Usage: tools/go-tools.sh SET [LDFLAGS]   (called by tools/SET/build.sh)
set -euo pipefail
set_name=$1
extra_ldflags=${2:-}
tools=$(cd "$(dirname "$0")" && pwd)
here=$tools/$set_name
root=$(cd "$tools/.." && pwd)
# The tool packages of go.mod (`tool pkg` or a `tool ( … )` block); a binary is named after the
# last element of its package path.
mapfile -t binaries < <(awk '/^tool \(/{block=1; next} block && /^\)/{block=0} block{print $1} /^tool [^(]/{print $2}' \
    "$here/go.mod" | xargs -n1 basename)

fail() {
    echo "make $set_name: $1 failed (exit $2)." >&2
    echo "  rerun it with: cd tools/$set_name && $3" >&2
    echo "  (the Go module proxy must be reachable; GOPROXY=$(go env GOPROXY 2>/dev/null || echo '?'))" >&2
    exit 1
}

command -v go >/dev/null || {
    echo "make $set_name: Go is not installed; install Go >= $(awk '/^go /{print $2}' "$here/go.mod") and rerun make $set_name" >&2
    exit 1
}

key=$( (cat "$here/go.mod" "$here/go.sum" "$here/build.sh" "$tools/go-tools.sh"; echo "$extra_ldflags"; go version; go env GOOS GOARCH) \
    | sha256sum | cut -c1-16)
cache=${WASMOP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wasmop}/$set_name/$key
link=$root/target/$set_name/bin

have_all() { for b in "${binaries[@]}"; do [ -x "$1/$b" ] || return 1; done; }

if ! have_all "$cache/bin"; then
    echo "make $set_name: building ${binaries[*]} from source into $cache" >&2
    echo "  (the first build takes minutes on 2 cores; later runs reuse the cache)" >&2
    cd "$here"
    echo "make $set_name: step 1/2: go mod download" >&2
    timeout 1800 go mod download || fail "step 1/2 (go mod download)" $? "go mod download"
    mkdir -p "$(dirname "$cache")"
    tmp=$(mktemp -d "$(dirname "$cache")/tmp.XXXXXX")
    ldflags="-s -w $extra_ldflags"
    echo "make $set_name: step 2/2: go build ${binaries[*]}" >&2
    timeout 3600 go build -trimpath -ldflags "$ldflags" -o "$tmp/" tool \
        || fail "step 2/2 (go build)" $? "go build -trimpath -ldflags '$ldflags' -o /tmp/$set_name/ tool"
    have_all "$tmp" || { echo "make $set_name: go build did not produce all of ${binaries[*]} in $tmp" >&2; exit 1; }
    mkdir -p "$cache"
    rm -rf "$cache/bin"
    mv "$tmp" "$cache/bin"
fi
mkdir -p "$(dirname "$link")"
ln -sfn "$cache/bin" "$link"
echo "$link"
