#!/usr/bin/env bash
# Builds target/wasm32-wasip2/plugin/js_policy.wasm from policy.js (+ plugins/sdk-js/wasmop-plugin.js)
# with componentize-qjs (pinned in plugins/sdk-js/package.json + package-lock.json, installed with
# `npm ci` into target/polyglot/node_modules). Run from anywhere; needs Node >= 18 and npm.
#
#   examples/js-policy/build.sh            # build (reproducible: same sources, same bytes)
#   WASMOP_REPRODUCIBLE=0 examples/js-policy/build.sh   # without the deterministic shim
#   OPT_SIZE=1 examples/js-policy/build.sh  # QuickJS runtime built for size: 1.13 MB instead of 1.67 MB
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
sdk=$root/plugins/sdk-js
tools=$root/target/polyglot
out=$root/target/wasm32-wasip2/plugin/js_policy.wasm

# 1. The pinned toolchain, installed once (again only when the lockfile changes).
mkdir -p "$tools" "$(dirname "$out")"
if ! cmp -s "$sdk/package-lock.json" "$tools/package-lock.json" || [ ! -x "$tools/node_modules/.bin/componentize-qjs" ]; then
  cp "$sdk/package.json" "$sdk/package-lock.json" "$tools/"
  (cd "$tools" && npm ci --no-audit --no-fund --loglevel=error)
fi

# 2. Reproducibility: QuickJS' pre-initialisation snapshot captures WASI random and clock values,
#    which Wasmtime takes from the host; a small LD_PRELOAD shim makes them fixed.
preload=
if [ "${WASMOP_REPRODUCIBLE:-1}" != 0 ] && command -v cc >/dev/null; then
  shim=$tools/deterministic.so
  if [ ! -f "$shim" ] || [ "$sdk/tools/deterministic.c" -nt "$shim" ]; then
    cc -shared -fPIC -O2 -o "$shim" "$sdk/tools/deterministic.c" -ldl
  fi
  preload=$shim
  export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1735689600}
fi

# 3. The component. Run from the repository root with relative paths, so that no absolute path of
#    this checkout ends up in the module names (and the bytes). --sync: the host does not enable
#    component-model async (without it the host refuses the file: `task.cancel` requires the
#    component model async feature).
cd "$root"
LD_PRELOAD=$preload "$tools/node_modules/.bin/componentize-qjs" \
  --wit wit/plugin.wit --world policy --sync ${OPT_SIZE:+--opt-size} \
  --js examples/js-policy/policy.js --module-root . \
  --output "$out" >/dev/null
echo "built $out ($(stat -c %s "$out") bytes, sha256 $(sha256sum "$out" | cut -c1-12))"
