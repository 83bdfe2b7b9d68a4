#!/usr/bin/env bash
# Steady-state cost of the gpufleet agent (8 simulated GPUs, sampled and
# reported every second, /metrics scraped every second) side by side with
# prometheus-node-exporter scraped at the same rate on the same machine.
#
# Each run starts a coordinator, one agent and one node-exporter on free
# loopback ports, lets them settle for WARMUP seconds, then for DURATION
# seconds scrapes both once per second with curl (as Prometheus would) and
# samples their RSS once per second. CPU is utime+stime from /proc/PID/stat
# over the measured window, as a percent of one core. Every process is
# started fresh for each of RUNS runs; the table gives medians over runs and
# the ratio agent / node-exporter. See docs/BENCHMARKS.md.
#
#   benches/agent.sh                                   # 3 runs x 120 s
#   RUNS=5 DURATION=300 GPUS=8 benches/agent.sh
#   GPU_BACKEND=nvml benches/agent.sh                  # real GPUs: NVML sample cost
set -euo pipefail

RUNS=${RUNS:-3}
DURATION=${DURATION:-120}
WARMUP=${WARMUP:-5}
GPUS=${GPUS:-8}
GPU_BACKEND=${GPU_BACKEND:-simulated}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$(pwd)/target}

NODE_EXPORTER=${NODE_EXPORTER:-$(command -v prometheus-node-exporter || true)}
if [ -z "$NODE_EXPORTER" ]; then
  echo "prometheus-node-exporter not found; installing the Debian package" >&2
  apt-get install -y prometheus-node-exporter >&2
  NODE_EXPORTER=$(command -v prometheus-node-exporter)
fi
command -v curl >/dev/null || { echo "curl is required (apt-get install -y curl)" >&2; exit 1; }

cargo build --release --bin gpufleet >&2
BIN=$CARGO_TARGET_DIR/release/gpufleet
[ -x "$BIN" ] || { echo "no binary at $BIN after the build" >&2; exit 1; }

TICK=$(getconf CLK_TCK)
WORK=$(mktemp -d -t gpufleet-agent-bench.XXXXXX)
PIDS=()

stop_all() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
}
trap 'stop_all; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

# A loopback port that nothing listens on: bind port 0 and let the kernel pick.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null && return
  local p
  while :; do
    p=$((20000 + RANDOM % 20000))
    ss -Hltn "sport = :$p" | grep -q . || { echo "$p"; return; }
  done
}

# Waits until URL answers and its body matches PATTERN (grep -E).
wait_for() {
  local url=$1 pattern=$2 what=$3 log=$4 i
  for i in $(seq 1 150); do
    if curl -fsS --max-time 1 "$url" 2>/dev/null | grep -Eq "$pattern"; then return; fi
    sleep 0.2
  done
  echo "$what did not become ready at $url within 30 s; its log:" >&2
  tail -20 "$log" >&2
  exit 1
}

# On-CPU nanoseconds of the agent's GPU sampling thread (exact, from the
# scheduler): divided by the samples taken, the CPU cost of one sample.
sampler_ns() {
  local t
  for t in /proc/"$1"/task/*; do
    [ "$(cat "$t/comm")" = gpu-sampler ] && { cut -d' ' -f1 "$t/schedstat"; return; }
  done
  echo "no gpu-sampler thread in process $1" >&2
  exit 1
}
cpu_ticks() { awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR == 0) print "nan"; else print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
max() { sort -g | tail -1; }
metric() { awk -v name="$1" '$1 == name || index($1, name "{") == 1 {print $NF; exit}' "$2"; }

# One run, in this shell (so the EXIT trap knows its processes): appends
# "agent_cpu_pct agent_rss_med_mib agent_rss_max_mib ne_cpu_pct
# ne_rss_med_mib ne_rss_max_mib sample_cost_med_us sample_cost_max_us
# agent_bytes ne_bytes agent_self_cpu_pct gpus sampler_cpu_us_per_sample" to
# $WORK/runs.
one_run() {
  local run=$1 dir=$WORK/run$run
  mkdir -p "$dir/coord" "$dir/state" "$dir/models"
  local grpc http agent_http ne_port
  grpc=$(free_port); http=$(free_port); agent_http=$(free_port); ne_port=$(free_port)

  : > "$dir/coordinator.toml"
  "$BIN" coordinator --config "$dir/coordinator.toml" --log-format text \
    --listen "127.0.0.1:$grpc" --http-listen "127.0.0.1:$http" --data-dir "$dir/coord" \
    > "$dir/coordinator.log" 2>&1 &
  PIDS+=($!)
  wait_for "http://127.0.0.1:$http/healthz" . coordinator "$dir/coordinator.log"

  cat > "$dir/agent.toml" <<EOF
node_name = "bench-node"
coordinator = "http://127.0.0.1:$grpc"
state_dir = "$dir/state"
http_listen = "127.0.0.1:$agent_http"
report_interval = "1s"
model_roots = ["$dir/models"]
# The benchmark's servers run as whoever runs it, root on a lent GPU host.
allow_root_replicas = true

[gpu]
backend = "$GPU_BACKEND"
sample_interval = "1s"
simulated_count = $GPUS
EOF
  local sim_flags=()
  [ "$GPU_BACKEND" = simulated ] && sim_flags=(--gpu-backend simulated --simulated-gpus "$GPUS")
  "$BIN" agent --config "$dir/agent.toml" --log-format text "${sim_flags[@]}" \
    > "$dir/agent.log" 2>&1 &
  local agent=$!
  PIDS+=("$agent")

  "$NODE_EXPORTER" --web.listen-address="127.0.0.1:$ne_port" > "$dir/node-exporter.log" 2>&1 &
  local ne=$!
  PIDS+=("$ne")

  wait_for "http://127.0.0.1:$agent_http/metrics" '^gpufleet_agent_coordinator_connected\{.*\} 1$' agent "$dir/agent.log"
  wait_for "http://127.0.0.1:$ne_port/metrics" '^node_exporter_build_info' node-exporter "$dir/node-exporter.log"
  sleep "$WARMUP"

  local a0 n0 t0 now next i self0 self1
  curl -fsS "http://127.0.0.1:$agent_http/metrics" -o "$dir/agent.prom"
  self0=$(metric process_cpu_seconds_total "$dir/agent.prom")
  local s0 s1
  s0=$(sampler_ns "$agent")
  a0=$(cpu_ticks "$agent"); n0=$(cpu_ticks "$ne"); t0=$(date +%s.%N)
  next=$t0
  : > "$dir/samples"
  for i in $(seq 1 "$DURATION"); do
    next=$(echo "$next + 1" | bc)
    now=$(date +%s.%N)
    sleep "$(echo "if ($next > $now) $next - $now else 0" | bc)"
    curl -fsS --max-time 1 "http://127.0.0.1:$agent_http/metrics" -o "$dir/agent.prom" \
      || { echo "run $run: scrape of the agent failed at second $i" >&2; tail -20 "$dir/agent.log" >&2; exit 1; }
    curl -fsS --max-time 1 "http://127.0.0.1:$ne_port/metrics" -o "$dir/ne.prom" \
      || { echo "run $run: scrape of node-exporter failed at second $i" >&2; exit 1; }
    echo "$(rss_kib "$agent") $(rss_kib "$ne") $(metric gpufleet_agent_gpu_sample_seconds "$dir/agent.prom") $(stat -c %s "$dir/agent.prom") $(stat -c %s "$dir/ne.prom")" >> "$dir/samples"
  done
  local a1 n1 t1 wall
  a1=$(cpu_ticks "$agent"); n1=$(cpu_ticks "$ne"); t1=$(date +%s.%N)
  s1=$(sampler_ns "$agent")
  self1=$(metric process_cpu_seconds_total "$dir/agent.prom")
  wall=$(echo "$t1 - $t0" | bc -l)

  pct() { echo "100 * ($2 - $1) / $TICK / $wall" | bc -l; }
  col() { awk -v c="$1" '{print $c}' "$dir/samples"; }
  printf '%.3f %.1f %.1f %.3f %.1f %.1f %.1f %.1f %.0f %.0f %.3f %d %.1f\n' \
    "$(pct "$a0" "$a1")" \
    "$(col 1 | median | awk '{print $1/1024}')" "$(col 1 | max | awk '{print $1/1024}')" \
    "$(pct "$n0" "$n1")" \
    "$(col 2 | median | awk '{print $1/1024}')" "$(col 2 | max | awk '{print $1/1024}')" \
    "$(col 3 | median | awk '{print $1*1e6}')" "$(col 3 | max | awk '{print $1*1e6}')" \
    "$(col 4 | median)" "$(col 5 | median)" \
    "$(echo "100 * ($self1 - $self0) / $wall" | bc -l)" \
    "$(grep -c '^DCGM_FI_DEV_GPU_UTIL{' "$dir/agent.prom" || true)" \
    "$(echo "($s1 - $s0) / 1000 / $wall" | bc -l)" >> "$WORK/runs"
  stop_all
}

command -v bc >/dev/null || { echo "bc is required (apt-get install -y bc)" >&2; exit 1; }
echo "agent: $GPU_BACKEND backend, $GPUS GPUs, sample and report every 1 s; $RUNS runs of ${DURATION} s after ${WARMUP} s warm-up" >&2
: > "$WORK/runs"
for run in $(seq 1 "$RUNS"); do
  one_run "$run"
  set -- $(tail -1 "$WORK/runs")
  echo "run $run: ${12} GPUs; agent ${1}% CPU, RSS ${2}/${3} MiB (median/max); node-exporter ${4}% CPU, RSS ${5}/${6} MiB; GPU sample ${7}/${8} us wall, ${13} us CPU" >&2
done

m() { awk -v c="$1" '{print $c}' "$WORK/runs" | median; }
mx() { awk -v c="$1" '{print $c}' "$WORK/runs" | max; }
per_run() { awk -v c="$1" '{printf "%s%s", sep, $c; sep=", "}' "$WORK/runs"; }
ratio() { echo "$1 / $2" | bc -l; }
gpus=$(m 12)
a_cpu=$(m 1); a_rss=$(m 2); a_rss_max=$(mx 3)
n_cpu=$(m 4); n_rss=$(m 5); n_rss_max=$(mx 6)

echo
echo "| process | CPU, % of one core (median of $RUNS) | CPU per run | RSS median (MiB) | RSS max (MiB) | /metrics bytes |"
echo "|---|---|---|---|---|---|"
printf '| gpufleet agent (%s GPUs, %s) | %.3f | %s | %.1f | %.1f | %.0f |\n' "$gpus" "$GPU_BACKEND" "$a_cpu" "$(per_run 1)" "$a_rss" "$a_rss_max" "$(m 9)"
printf '| prometheus-node-exporter | %.3f | %s | %.1f | %.1f | %.0f |\n' "$n_cpu" "$(per_run 4)" "$n_rss" "$n_rss_max" "$(m 10)"
printf '| ratio agent / node-exporter | %.2fx | | %.2fx | %.2fx | |\n' "$(ratio "$a_cpu" "$n_cpu")" "$(ratio "$a_rss" "$n_rss")" "$(ratio "$a_rss_max" "$n_rss_max")"
echo
printf 'Agent self-reported: process_cpu_seconds_total rate %.3f%% (median of runs); gpufleet_agent_gpu_sample_seconds median %.1f us, max %.1f us (wall time of one sample of all %s GPUs).\n' \
  "$(m 11)" "$(m 7)" "$(mx 8)" "$gpus"
printf 'GPU sampling thread: %.1f us of CPU per sample of all %s GPUs (median of runs; schedstat of the gpu-sampler thread / samples).\n' "$(m 13)" "$gpus"
printf 'Targets: agent CPU < 0.5%% of one core: %s; agent RSS < 20 MiB (max): %s.\n' \
  "$(awk -v v="$a_cpu" 'BEGIN {print (v < 0.5) ? "met" : "NOT met"}')" \
  "$(awk -v v="$a_rss_max" 'BEGIN {print (v < 20) ? "met" : "NOT met"}')"
