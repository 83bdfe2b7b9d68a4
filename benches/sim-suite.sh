#!/usr/bin/env bash
# The simulator's benchmark suite (docs/simulate.md): every synthetic trace
# kind × seed through `gpufleet simulate` with all policies and the oracle,
# printed as the markdown table the docs show.
#
#   benches/sim-suite.sh                       # 6 kinds × seeds 1 2 3
#   KINDS="on-off flash-crowd" SEEDS="4 5" benches/sim-suite.sh
#   MODEL=my-model.toml EXTRA="--concurrency 16" benches/sim-suite.sh
#   BIN=target/release/gpufleet benches/sim-suite.sh
#   SHORT="--duration 8h --peak-rps 15" DAY="--duration 24h --peak-rps 10 --bursts 6" \
#     SEEDS="11 12" benches/sim-suite.sh       # the held-out set
#   SLO="--slo-kind ttft --slo 5s" benches/sim-suite.sh   # one SLO for every kind
#
# Every run: 6 h at --peak-rps 30 (diurnal: 24 h at 20; SHORT and DAY change
# these), --start-at-level,
# --slo 10s end to end (conversational: --slo-kind ttft --slo 2s); SLO, when
# set, is every kind's instead.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

BIN=${BIN:-target/debug/gpufleet}
MODEL=${MODEL:-tests/fixtures/traces/model.toml}
KINDS=${KINDS:-"code-completion conversational diurnal on-off flash-crowd slow-ramp"}
SEEDS=${SEEDS:-"1 2 3"}
EXTRA=${EXTRA:-}
SLO=${SLO:-}
SHORT=${SHORT:-"--duration 6h --peak-rps 30"}
DAY=${DAY:-"--duration 24h --peak-rps 20"}
[ -x "$BIN" ] || { echo "no binary at $BIN (cargo build first)" >&2; exit 1; }
command -v jq >/dev/null || { echo "jq is needed" >&2; exit 1; }

echo "| Trace | Seed | gpufleet in SLO | best baseline in SLO | gpufleet GPU-h | × oracle | HPA GPU-h (SLO) | Knative GPU-h (SLO) | static-peak GPU-h | gpufleet vs static-peak | SLO goal | ≤ 1.2× oracle |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
for kind in $KINDS; do
  for seed in $SEEDS; do
    args=(--synthetic "$kind" --seed "$seed" --start-at-level --model "$MODEL"
      --policies gpufleet,hpa,knative,static-peak,oracle -o json)
    case $kind in
      # shellcheck disable=SC2206
      diurnal) args+=($DAY) ;;
      # shellcheck disable=SC2206
      *) args+=($SHORT) ;;
    esac
    if [ -n "$SLO" ]; then
      # shellcheck disable=SC2206
      args+=($SLO)
    else
      case $kind in
        conversational) args+=(--slo-kind ttft --slo 2s) ;;
        *) args+=(--slo 10s) ;;
      esac
    fi
    # shellcheck disable=SC2086
    "$BIN" simulate "${args[@]}" $EXTRA | jq -r --arg kind "$kind" --arg seed "$seed" '
      (map({key: .policy, value: .}) | from_entries) as $p
      | def pct: (. * 10000 | round) / 100 | tostring + "%";
        def gh: (. * 10 | round) / 10 | tostring;
      ([$p.hpa, $p.knative, $p["static-peak"]] | max_by(.slo_share)) as $best
      | $p.gpufleet as $g
      | "| \($kind) | \($seed) | \($g.slo_share | pct) | \($best.slo_share | pct) (\($best.policy))"
        + " | \($g.gpu_hours | gh) | \(($g.gpu_hours_vs_oracle * 100 | round) / 100)×"
        + " | \($p.hpa.gpu_hours | gh) (\($p.hpa.slo_share | pct))"
        + " | \($p.knative.gpu_hours | gh) (\($p.knative.slo_share | pct))"
        + " | \($p["static-peak"].gpu_hours | gh)"
        + " | \((((1 - $g.gpu_hours / $p["static-peak"].gpu_hours) * 100 | round) + 0) as $d | if $d >= 0 then "+\($d)" else "\($d)" end)%"
        + " | \(if $g.slo_share >= $best.slo_share - 0.002 then "yes" else "no" end)"
        + " | \(if $g.gpu_hours_vs_oracle <= 1.2 then "yes" else "no" end) |"'
  done
done
