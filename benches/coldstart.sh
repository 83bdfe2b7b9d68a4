#!/usr/bin/env bash
# Cold-start effect: time from starting the demo model server
# (`gpufleet demo server`, which reads its weights fully before /health says
# 200) to its first 200 on /health, with the weights file
#   cold    - evicted from the page cache (sync + vmtouch -e, checked 0%),
#   warmed  - evicted, then filled by gpufleet's warmer (fill_path, untimed),
#   cached  - evicted, then just read with cat (the "already cached" case).
# RUNS rounds (default 5), the three cases interleaved; medians reported.
#
#   benches/coldstart.sh
#   WEIGHTS=/srv/models/big.bin SIZE_MIB=8192 RUNS=5 benches/coldstart.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

WEIGHTS=${WEIGHTS:-/var/tmp/gpufleet-bench2/server-weights.bin}
SIZE_MIB=${SIZE_MIB:-3072}
RUNS=${RUNS:-5}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
. benches/lib.sh
need vmtouch
need bc

mkdir -p "$(dirname "$WEIGHTS")"
if [ "$(stat -c %s "$WEIGHTS" 2>/dev/null || echo 0)" != $((SIZE_MIB << 20)) ]; then
  echo "generating $WEIGHTS ($SIZE_MIB MiB)" >&2
  head -c "${SIZE_MIB}M" /dev/urandom >"$WEIGHTS"
fi
sync

# Both binaries live in a target dir other builds may rewrite: use copies.
work=$(mktemp -d /tmp/gpufleet-coldstart.XXXXXX)
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
cargo build --release --quiet
cp "$CARGO_TARGET_DIR/release/gpufleet" "$work/gpufleet"
copy_lib_tests "$work/lib-tests"

evict() { evict_cold "$WEIGHTS"; }
check_resident() { check_warm "$1" "$WEIGHTS"; }
prepare_cold()   { evict; }
prepare_warmed() {
  evict
  GPUFLEET_WARM_BENCH_PATH=$WEIGHTS "$work/lib-tests" --ignored --exact agent::warm::fill::tests::warm_bench --nocapture >/dev/null 2>&1
  check_resident warmed
}
prepare_cached() { evict; cat "$WEIGHTS" >/dev/null; check_resident cached; }

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# Starts the server and polls /health every 5 ms; prints seconds to the first 200.
time_to_ready() {
  local port; port=$(free_port)
  local t0; t0=$(date +%s.%N)
  "$work/gpufleet" demo server --port "$port" --weights "$WEIGHTS" >"$work/server.log" 2>&1 &
  server=$!
  python3 - "$port" "$t0" <<'PY'
import sys, time, urllib.request
port, t0 = sys.argv[1], float(sys.argv[2])
deadline = time.time() + 120
while time.time() < deadline:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
            if r.status == 200:
                print(f"{time.time() - t0:.3f}")
                sys.exit(0)
    except Exception:
        pass
    time.sleep(0.005)
sys.exit("server not ready within 120 s")
PY
  kill "$server"; wait "$server" 2>/dev/null || true
  server=""
}

declare -A times
for run in $(seq 1 "$RUNS"); do
  for case_ in cold warmed cached; do
    "prepare_$case_"
    t=$(time_to_ready)
    times[$case_]+="$t "
    echo "run $run $case_ $t s" >&2
  done
done

c=$(echo "${times[cached]}" | median)
echo
echo "weights: $WEIGHTS ($(($(stat -c %s "$WEIGHTS") >> 20)) MiB); median of $RUNS runs each"
echo
echo "| weights | time to ready (s) | vs already cached | all runs (s) |"
echo "|---|---|---|---|"
for case_ in cold warmed cached; do
  m=$(echo "${times[$case_]}" | median)
  printf '| %s | %.3f | %.2fx | %s|\n' "$case_" "$m" "$(echo "$m / $c" | bc -l)" "${times[$case_]}"
done
