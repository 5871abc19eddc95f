#!/usr/bin/env bash
# Builds target/wasm32-wasip2/plugin/python_operator.wasm from pyapp.py and the vendored helper
# plugins/sdk-python/wasmop_plugin.py with componentize-py (pinned in requirements.txt, installed
# into the venv target/polyglot/venv, reused when present). Run from anywhere; needs python3 >= 3.10.
#
#   examples/python-operator/build.sh           # build; a no-op when no input changed
#   FORCE=1 examples/python-operator/build.sh   # build even so
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
venv=$root/target/polyglot/venv
build=$root/target/polyglot/build/python-operator
out=$root/target/wasm32-wasip2/plugin/python_operator.wasm
pin=$(grep -o '^componentize-py==[^ ]*' "$here/requirements.txt")

# 1. The pinned tool, in a venv of its own (reused when it already has the pinned version).
if [ "$("$venv/bin/componentize-py" --version 2>/dev/null)" != "componentize-py ${pin#*==}" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
fi

# 2. The sources, vendored into a build directory: componentize-py's pre-initialisation imports
#    them with write access and leaves __pycache__ behind, which stays out of the source tree.
#    The module is `pyapp`, not `operator`: that is both the WIT world's name and a stdlib module.
inputs=("$here/pyapp.py" "$root/plugins/sdk-python/wasmop_plugin.py" "$root/wit/plugin.wit" "$here/requirements.txt" "$0")
stamp=$(cat "${inputs[@]}" | sha256sum | cut -d' ' -f1)

# 3. componentize-py 0.25.1 is not reproducible (two builds of the same sources differ: the
#    pre-initialised interpreter keeps its hash secret, random state and file mtimes of the build).
#    So a rebuild with unchanged inputs keeps the existing file, and with it the plugin's revision.
if [ -z "${FORCE:-}" ] && [ -f "$out" ] && [ -f "$build/stamp" ] &&
   [ "$(cat "$build/stamp")" = "$stamp $(sha256sum < "$out" | cut -d' ' -f1)" ]; then
  echo "up to date $out ($(stat -c %s "$out") bytes, sha256 $(sha256sum "$out" | cut -c1-12))"
  exit 0
fi
rm -rf "$build" && mkdir -p "$build" "$(dirname "$out")"
cp "$here/pyapp.py" "$root/plugins/sdk-python/wasmop_plugin.py" "$build/"
(cd "$build" && "$venv/bin/componentize-py" --quiet --wit-path "$root/wit/plugin.wit" --world operator \
  componentize pyapp --python-path . --output "$out.tmp")
mv "$out.tmp" "$out"
echo "$stamp $(sha256sum < "$out" | cut -d' ' -f1)" > "$build/stamp"
echo "built $out ($(stat -c %s "$out") bytes, sha256 $(sha256sum "$out" | cut -c1-12))"
