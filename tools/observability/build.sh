#!/usr/bin/env bash
# Builds Prometheus's promtool and server (at the version go.mod pins) once into the tool cache and links
# target/observability/bin to it; see ../go-tools.sh.
set -euo pipefail
exec "$(dirname "$0")/../go-tools.sh" observability
