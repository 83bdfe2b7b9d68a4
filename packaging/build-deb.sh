#!/usr/bin/env bash
# Builds the gpufleet .deb (release profile) with cargo-deb from the
# [package.metadata.deb] table in Cargo.toml, and prints the .deb's path as
# the last line of stdout. Honours CARGO_TARGET_DIR; the .deb goes to
# $DEB_OUT (default: <target dir>/debian). Installs cargo-deb if missing.
# cargo-deb packages <target dir>/release/gpufleet: give each checkout its
# own target dir, since cargo does not re-copy a fresh binary over one that
# another checkout built there.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if ! command -v cargo-deb >/dev/null 2>&1; then
    echo "build-deb: installing cargo-deb (cargo install cargo-deb --locked)" >&2
    cargo install cargo-deb --locked >&2
fi

target_dir=${CARGO_TARGET_DIR:-$root/target}
out=${DEB_OUT:-$target_dir/debian}
mkdir -p "$out"

# cargo-deb prints the path of the package it wrote as its last line; the
# build's own output goes to stderr so callers can take our last line.
deb=$(cargo deb --output "$out" -- --locked | tail -n 1)
if [[ ! -f "$deb" ]]; then
    echo "build-deb: cargo-deb did not report a package file (got: '$deb')" >&2
    exit 1
fi
echo "$deb"
