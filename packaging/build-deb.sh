#!/usr/bin/env bash
# Builds the gpufleet .deb with cargo-deb from the [package.metadata.deb]
# table in Cargo.toml, and prints the .deb's path as the last line of stdout.
#
#   packaging/build-deb.sh             build the release binary, then package it
#   packaging/build-deb.sh --no-build  package the release binary already built
#
# The man pages and shell completions are generated from the binary being
# packaged, so they always match it. Honours CARGO_TARGET_DIR; the .deb goes
# to $DEB_OUT (default: <target dir>/debian). Installs cargo-deb if missing.
# cargo-deb packages <target dir>/release/gpufleet: give each checkout its
# own target dir, since cargo does not re-copy a fresh binary over one that
# another checkout built there.
set -euo pipefail

usage() {
    echo "usage: packaging/build-deb.sh [--no-build]" >&2
    exit 2
}
build=1
for arg in "$@"; do
    case $arg in
    --no-build) build=0 ;;
    -h | --help) usage ;;
    *)
        echo "build-deb: unknown argument '$arg'; allowed: --no-build" >&2
        usage
        ;;
    esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if ! command -v cargo-deb >/dev/null 2>&1; then
    echo "build-deb: installing cargo-deb (cargo install cargo-deb --locked)" >&2
    cargo install cargo-deb --locked >&2
fi

target_dir=${CARGO_TARGET_DIR:-$root/target}
out=${DEB_OUT:-$target_dir/debian}
bin=$target_dir/release/gpufleet
mkdir -p "$out"

if ((build)); then
    cargo build --release --locked >&2
elif [[ ! -x $bin ]]; then
    echo "build-deb: --no-build, but there is no binary at $bin; run 'cargo build --release' first" >&2
    exit 1
fi

# Man pages and completions, from the very binary that is packaged.
assets=$target_dir/release/deb-assets
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions"
"$bin" man --out-dir "$assets/man"
gzip -9n "$assets"/man/*.1
"$bin" completions bash >"$assets/completions/gpufleet.bash"
"$bin" completions zsh >"$assets/completions/_gpufleet"
"$bin" completions fish >"$assets/completions/gpufleet.fish"

# cargo-deb prints the path of the package it wrote as its last line.
deb=$(cargo deb --no-build --output "$out" | tail -n 1)
if [[ ! -f "$deb" ]]; then
    echo "build-deb: cargo-deb did not report a package file (got: '$deb')" >&2
    exit 1
fi
echo "$deb"
