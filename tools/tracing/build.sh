#!/usr/bin/env bash
# Builds Jaeger (at the version go.mod pins) once into the tool cache and links
# target/tracing/bin to it; see ../go-tools.sh.
set -euo pipefail
exec "$(dirname "$0")/../go-tools.sh" tracing
