#!/usr/bin/env bash
# Builds the OCI registry tools (crane, whose `crane registry serve` is a real OCI registry, and
# oras) at the versions go.mod pins, once into the tool cache, and links target/registry/bin to
# it; see ../go-tools.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
crane_version=$(awk '$1 == "github.com/google/go-containerregistry" {print $2}' "$here/go.mod")
# Built as a tool of this module, crane would report "(devel)"; give it its release.
exec "$here/../go-tools.sh" registry "-X github.com/google/go-containerregistry/cmd/crane/cmd.Version=$crane_version"
