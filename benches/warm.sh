#!/usr/bin/env bash
# Cold-cache warm of a model directory: the gpufleet warmer (fill_path, via the
# ignored `warm_bench` test) vs `vmtouch -t` vs `cat files > /dev/null`.
# Median of RUNS cold runs each; the files are evicted (fdatasync'd first) and
# checked to be 0% resident before every run. See docs/warm.md.
#
#   benches/warm.sh                     # 4 x 1 GiB under /var/tmp/gpufleet-warm-bench
#   FILES=8 SIZE_MIB=512 RUNS=5 WORKERS=8 DIR=/srv/models/bench benches/warm.sh
set -euo pipefail

DIR=${DIR:-/var/tmp/gpufleet-warm-bench}
FILES=${FILES:-4}
SIZE_MIB=${SIZE_MIB:-1024}
RUNS=${RUNS:-3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$(pwd)/target}

. "$(dirname "$0")/lib.sh"
need vmtouch
need bc
refuse_ram_fs "$DIR"

mkdir -p "$DIR"
for i in $(seq 0 $((FILES - 1))); do
  f=$DIR/model-0000$i-of-0000$FILES.safetensors
  if [ "$(stat -c %s "$f" 2>/dev/null || echo 0)" != $((SIZE_MIB << 20)) ]; then
    echo "generating $f ($SIZE_MIB MiB)" >&2
    head -c "${SIZE_MIB}M" /dev/urandom > "$f"
  fi
done
sync

work=$(mktemp -d /tmp/gpufleet-warm.XXXXXX)
trap 'rm -rf "$work"' EXIT
copy_lib_tests "$work/lib-tests"
BIN=$work/lib-tests

cold() { evict_cold "$DIR"; }

run_gpufleet() { GPUFLEET_WARM_BENCH_PATH=$DIR GPUFLEET_WARM_BENCH_WORKERS=${WORKERS:-4} "$BIN" --ignored --exact agent::warm::fill::tests::warm_bench --nocapture >/dev/null 2>&1; }
run_vmtouch()  { vmtouch -t -q "$DIR"; }
run_cat()      { cat "$DIR"/* > /dev/null; }

declare -A times
for run in $(seq 1 "$RUNS"); do
  for tool in gpufleet vmtouch cat; do
    cold
    t0=$(date +%s.%N)
    "run_$tool"
    t1=$(date +%s.%N)
    check_warm "$tool" "$DIR"
    times[$tool]+="$(echo "$t1 - $t0" | bc) "
    echo "run $run $tool $(echo "$t1 - $t0" | bc) s" >&2
  done
done

total_mib=$((FILES * SIZE_MIB))
g=$(echo "${times[gpufleet]}" | median)
echo
echo "| tool | median of $RUNS cold runs (s) | MiB/s | time vs gpufleet |"
echo "|---|---|---|---|"
for tool in gpufleet vmtouch cat; do
  m=$(echo "${times[$tool]}" | median)
  printf '| %s | %.2f | %.0f | %.2fx |\n' "$tool" "$m" "$(echo "$total_mib / $m" | bc -l)" "$(echo "$m / $g" | bc -l)"
done
