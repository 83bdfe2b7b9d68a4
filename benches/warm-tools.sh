#!/usr/bin/env bash
# Cold-cache fill of a 3 GiB model directory (files of 1 GiB, 768 MiB,
# 2 x 512 MiB, 256 MiB): the gpufleet warmer (fill_path via the ignored test
# `warm_bench`) vs the tools an operator would reach for (vmtouch -t, cat,
# fio buffered sequential read), and fio with O_DIRECT and a deep queue as the
# device's ceiling. Median of RUNS cold runs per tool, run interleaved; before
# every run the files are evicted (sync + vmtouch -e) and checked 0% resident.
# Each run is timed with /usr/bin/time, so the CPU (user + sys) each tool
# spends is reported next to its wall time.
#
#   benches/warm-tools.sh
#   RUNS=5 WORKERS=8 DIR=/srv/models/bench benches/warm-tools.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

DIR=${DIR:-/var/tmp/gpufleet-bench2/tools}
RUNS=${RUNS:-3}
WORKERS=${WORKERS:-4}
TOOLS=${TOOLS:-"gpufleet vmtouch cat fio_buffered fio_direct"}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}

. benches/lib.sh
need vmtouch
need fio
need bc
[ -x /usr/bin/time ] || apt-get install -y time >/dev/null
refuse_ram_fs "$DIR"

mkdir -p "$DIR"
for spec in 1024:a 768:b 512:c 512:d 256:e; do
  mib=${spec%%:*} f=$DIR/model-${spec##*:}.safetensors
  if [ "$(stat -c %s "$f" 2>/dev/null || echo 0)" != $((mib << 20)) ]; then
    echo "generating $f ($mib MiB)" >&2
    head -c "${mib}M" /dev/urandom >"$f"
  fi
done
sync
total_mib=$(($(du -b -c "$DIR"/* | tail -1 | cut -f1) >> 20))

# The test binary lives in a target dir other builds may rewrite: use a copy.
work=$(mktemp -d /tmp/gpufleet-warm-tools.XXXXXX)
trap 'rm -rf "$work"' EXIT
copy_lib_tests "$work/lib-tests"
BIN=$work/lib-tests

cold() { evict_cold "$DIR"; }

files=$(ls "$DIR"/* | tr '\n' ':' | sed 's/:$//')
run_gpufleet()     { GPUFLEET_WARM_BENCH_PATH=$DIR GPUFLEET_WARM_BENCH_WORKERS=$WORKERS "$BIN" --ignored --exact agent::warm::fill::tests::warm_bench --nocapture >/dev/null 2>&1; }
run_vmtouch()      { vmtouch -t -q -m 64G "$DIR"; }
run_cat()          { cat "$DIR"/* >/dev/null; }
run_fio_buffered() { fio --name=buffered --filename="$files" --rw=read --bs=1m --ioengine=psync --direct=0 --file_service_type=sequential --output=/dev/null; }
run_fio_direct()   { fio --name=direct --filename="$files" --rw=read --bs=8m --ioengine=libaio --iodepth=32 --direct=1 --file_service_type=sequential --output=/dev/null; }

declare -A wall cpu
for run in $(seq 1 "$RUNS"); do
  for tool in $TOOLS; do
    cold
    # %e wall, %U user, %S sys, all in seconds.
    /usr/bin/time -f "%e %U %S" -o "$work/time" bash -c "$(declare -f "run_$tool"); BIN=$BIN DIR=$DIR WORKERS=$WORKERS files=$files run_$tool"
    read -r e u s <"$work/time"
    [ "$tool" = fio_direct ] || check_warm "$tool" "$DIR"
    wall[$tool]+="$e "
    cpu[$tool]+="$(echo "$u + $s" | bc) "
    echo "run $run $tool wall $e s, user $u s, sys $s s" >&2
  done
done

g=$(echo "${wall[gpufleet]}" | median)
echo
echo "$total_mib MiB in $(ls "$DIR" | wc -l) files; median of $RUNS cold runs each; gpufleet with $WORKERS workers"
echo
echo "| tool | wall (s) | MiB/s | time vs gpufleet | CPU user+sys (s) |"
echo "|---|---|---|---|---|"
for tool in $TOOLS; do
  m=$(echo "${wall[$tool]}" | median)
  c=$(echo "${cpu[$tool]}" | median)
  printf '| %s | %.2f | %.0f | %.2fx | %.2f |\n' "$tool" "$m" "$(echo "$total_mib / $m" | bc -l)" "$(echo "$m / $g" | bc -l)" "$c"
done
