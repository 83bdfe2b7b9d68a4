//! `gpufleet simulate` as a user runs it: the real binary on a short
//! synthetic trace, JSON output, the SVG plot, a written trace read back, and
//! a broken trace reported by line and column.

use std::path::Path;
use std::process::{Command, Output};

const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/traces/model.toml"
);

fn simulate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gpufleet"))
        .arg("simulate")
        .args(args)
        .output()
        .expect("the gpufleet binary runs")
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn reports(json: &str) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(json)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {json}"))
        .as_array()
        .expect("an array of policies")
        .clone()
}

#[test]
fn compares_the_four_policies_as_json_and_plots_them() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("day.svg");
    let out = stdout(&simulate(&[
        "--synthetic",
        "diurnal",
        "--duration",
        "30m",
        "--peak-rps",
        "10",
        "--seed",
        "3",
        "--bursts",
        "1",
        "--model",
        MODEL,
        "-o",
        "json",
        "--plot",
        plot.to_str().unwrap(),
    ]));
    let rows = reports(&out);
    let names: Vec<&str> = rows.iter().map(|r| r["policy"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["gpufleet", "hpa", "knative", "static-peak"]);
    let requests = rows[0]["requests"].as_u64().unwrap();
    assert!(requests > 1000, "{requests}");
    for r in &rows {
        for key in [
            "policy",
            "requests",
            "slo_share",
            "p50_s",
            "p95_s",
            "p99_s",
            "gpu_hours",
            "cold_starts",
            "warm_starts",
            "scale_actions",
            "mean_queue_s",
        ] {
            assert!(r.get(key).is_some(), "{key} missing from {r}");
        }
        assert_eq!(r["requests"].as_u64(), Some(requests), "same trace for all");
        let share = r["slo_share"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&share), "{share}");
        let (p50, p95, p99) = (
            r["p50_s"].as_f64().unwrap(),
            r["p95_s"].as_f64().unwrap(),
            r["p99_s"].as_f64().unwrap(),
        );
        assert!(p50 > 0.0 && p50 <= p95 && p95 <= p99, "{r}");
        assert!(r["gpu_hours"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(rows[3]["cold_starts"].as_u64(), Some(0));

    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg"));
    for label in [
        "gpufleet",
        "hpa",
        "knative",
        "static-peak",
        "offered load",
        "p95 latency",
    ] {
        assert!(svg.contains(label), "plot lacks {label}");
    }
}

#[test]
fn a_written_trace_replays_to_the_same_requests_and_prints_a_table() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.csv");
    let written = simulate(&[
        "--synthetic",
        "diurnal",
        "--duration",
        "10m",
        "--peak-rps",
        "4",
        "--write-trace",
        trace.to_str().unwrap(),
    ]);
    stdout(&written);
    assert!(Path::new(&trace).exists());
    let lines = std::fs::read_to_string(&trace).unwrap().lines().count() as u64;

    let out = stdout(&simulate(&[
        "--trace",
        trace.to_str().unwrap(),
        "--model",
        MODEL,
        "--policies",
        "gpufleet,static-peak",
    ]));
    let header = out.lines().nth(1).unwrap_or_default();
    assert!(header.starts_with("POLICY"), "{out}");
    assert!(header.contains("IN SLO (e2e 10s)"), "{out}");
    let row = out.lines().find(|l| l.starts_with("gpufleet")).unwrap();
    let requests: u64 = row.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(
        requests,
        lines - 1,
        "every line but the header is a request"
    );
}

#[test]
fn public_trace_layouts_are_read_and_how_is_said() {
    let dir = tempfile::tempdir().unwrap();
    // The Mooncake trace: JSON lines, `timestamp` in milliseconds.
    let mooncake = dir.path().join("mooncake.jsonl");
    let lines: Vec<String> = (0..600)
        .map(|i| {
            format!(
                "{{\"timestamp\": {}, \"input_length\": 2000, \"output_length\": 100, \"hash_ids\": [{i}]}}",
                i * 500
            )
        })
        .collect();
    std::fs::write(&mooncake, lines.join("\n")).unwrap();
    // Replays a trace with gpufleet alone: its report, and how the run says
    // (on stderr) it read the trace.
    let replay = |trace: &Path, extra: &[&str]| {
        let mut args = vec!["--trace", trace.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--model", MODEL, "--policies", "gpufleet", "-o", "json"]);
        let o = simulate(&args);
        let report = reports(&stdout(&o)).remove(0);
        (report, String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let (report, err) = replay(&mooncake, &[]);
    assert_eq!(report["requests"], 600);
    assert!(
        err.contains("read 600 requests from")
            && err.contains("JSON lines; times from `timestamp` (milliseconds when a number); prompt tokens from `input_length`; answer tokens from `output_length`"),
        "{err}"
    );
    // 600 requests 0.5 s apart: five minutes, not 83 hours of seconds.
    let hours = report["gpu_hours"].as_f64().unwrap();
    assert!(hours < 1.0, "read as milliseconds: {hours} GPU-hours");

    // BurstGPT: token counts in `Request tokens` / `Response tokens`.
    let burst = dir.path().join("burstgpt.csv");
    std::fs::write(
        &burst,
        "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n\
         5,ChatGPT,472,18,490,Conversation log\n45,GPT-4,1087,0,1087,Conversation log\n",
    )
    .unwrap();
    let (_, err) = replay(&burst, &[]);
    assert!(
        err.contains("prompt tokens from `Request tokens`; answer tokens from `Response tokens`"),
        "{err}"
    );

    // A trace without token columns says what it filled in.
    let bare = dir.path().join("bare.csv");
    std::fs::write(&bare, "time\n0\n1\n").unwrap();
    let (_, err) = replay(&bare, &[]);
    assert!(
        err.contains("no prompt-token column: 1000 each (--context-tokens)"),
        "{err}"
    );

    // One model of several.
    let (report, err) = replay(&burst, &["--trace-model", "GPT-4"]);
    assert_eq!(report["requests"], 1);
    assert!(
        err.contains("1 of 2 requests, those whose `Model` is `GPT-4`"),
        "{err}"
    );

    // --time-unit belongs to --trace.
    let o = simulate(&[
        "--synthetic",
        "diurnal",
        "--time-unit",
        "ms",
        "--model",
        MODEL,
    ]);
    assert_eq!(o.status.code(), Some(2), "a usage error");
}

#[test]
fn a_broken_trace_names_the_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("bad.csv");
    std::fs::write(
        &trace,
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:50,396,lots\n",
    )
    .unwrap();
    let o = simulate(&["--trace", trace.to_str().unwrap(), "--model", MODEL]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("line 3, column 3 (GeneratedTokens): expected a whole number of tokens"),
        "{err}"
    );
    let o = simulate(&["--model", MODEL]);
    assert_eq!(o.status.code(), Some(2), "a usage error");
}

#[test]
fn unknown_slo_kinds_and_synthetic_kinds_are_refused_naming_the_allowed() {
    let o = simulate(&["--synthetic", "weekly", "--model", MODEL]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    for allowed in [
        "diurnal",
        "code-completion",
        "conversational",
        "on-off",
        "flash-crowd",
        "slow-ramp",
    ] {
        assert!(err.contains(allowed), "{allowed} not named in: {err}");
    }
    let o = simulate(&[
        "--synthetic",
        "diurnal",
        "--slo-kind",
        "p99",
        "--model",
        MODEL,
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("ttft") && err.contains("e2e"), "{err}");
}

#[test]
fn every_synthetic_kind_runs_with_a_ttft_slo_and_reports_against_the_oracle() {
    for kind in [
        "code-completion",
        "conversational",
        "on-off",
        "flash-crowd",
        "slow-ramp",
    ] {
        let out = stdout(&simulate(&[
            "--synthetic",
            kind,
            "--duration",
            "20m",
            "--peak-rps",
            "4",
            "--slo-kind",
            "ttft",
            "--slo",
            "2s",
            "--start-at-level",
            "--model",
            MODEL,
            "--policies",
            "gpufleet,static-peak,oracle",
            "-o",
            "json",
        ]));
        let rows = reports(&out);
        let names: Vec<&str> = rows.iter().map(|r| r["policy"].as_str().unwrap()).collect();
        assert_eq!(names, vec!["gpufleet", "static-peak", "oracle"], "{kind}");
        let oracle = rows[2]["gpu_hours"].as_f64().unwrap();
        assert!(oracle > 0.0, "{kind}: {out}");
        for r in &rows[..2] {
            let ratio = r["gpu_hours_vs_oracle"].as_f64().unwrap();
            assert!(ratio >= 1.0, "{kind}: {r}");
            assert_eq!(r["oracle_gpu_hours"].as_f64(), Some(oracle), "{kind}");
        }
    }
}

/// A synthetic trace `kind` of `duration` at 30 req/s peak with a 10 s SLO,
/// replayed through gpufleet and `baseline` on `model`: the JSON output and
/// the two reports.
const E2E_10S: &[&str] = &["--slo", "10s"];

fn gpufleet_against(
    kind: &str,
    seed: &str,
    duration: &str,
    model: &str,
    baseline: &str,
    slo: &[&str],
) -> (String, serde_json::Value, serde_json::Value) {
    let policies = format!("gpufleet,{baseline}");
    let run = [
        "--synthetic",
        kind,
        "--seed",
        seed,
        "--duration",
        duration,
        "--peak-rps",
        "30",
        "--start-at-level",
        "--model",
        model,
        "--policies",
        &policies,
        "-o",
        "json",
    ];
    let out = stdout(&simulate(&[&run[..], slo].concat()));
    let mut rows = reports(&out).into_iter();
    let (g, b) = (rows.next().unwrap(), rows.next().unwrap());
    (out, g, b)
}

fn hours(r: &serde_json::Value) -> f64 {
    r["gpu_hours"].as_f64().unwrap()
}

fn share(r: &serde_json::Value) -> f64 {
    r["slo_share"].as_f64().unwrap()
}

#[test]
fn recurring_short_bursts_cost_about_a_fleet_kept_for_them_not_a_panic_each() {
    // Two hours of code completion: ~10 s bursts every 3 minutes on a
    // steady base, each over before a replica could start for it. The
    // run's 10 s SLO reaches gpufleet's spec, whose burst memory keeps what
    // the bursts need within it; a panic held for each burst cost more
    // than twice static-peak's GPU-hours here. Five seeds: where one burst
    // lands against a walk down moves a single run's share by tenths of a
    // point either way.
    let (mut shares, mut static_shares) = (0.0, 0.0);
    for seed in ["1", "2", "3", "4", "5"] {
        let (out, g, s) =
            gpufleet_against("code-completion", seed, "2h", MODEL, "static-peak", E2E_10S);
        assert!(hours(&g) <= 1.5 * hours(&s), "seed {seed}: {out}");
        shares += share(&g);
        static_shares += share(&s);
    }
    assert!(
        shares / 5.0 >= static_shares / 5.0 - 0.002,
        "mean share {} against static-peak's {}",
        shares / 5.0,
        static_shares / 5.0
    );
}

#[test]
fn a_spec_that_states_only_its_slo_keeps_the_slots_its_queue_needs() {
    // Three hours of a steady climb with 5 s requests and a 10 s SLO, on a
    // spec with no target of its own: the SLO sets it. Replicas run on
    // every slot were a queue that never settled (97.9-99.0% against HPA's
    // 99.9% over six hours); the queueing target keeps the few slots a
    // 4.8 s wait needs free, and holds fewer GPU-hours than HPA at every
    // slot does.
    slo_only_slow_ramp_beats_hpa(E2E_10S, 0.002);
}

/// Three seeds of a 3 h slow ramp on the SLO-only spec with the SLO
/// `slo`: gpufleet holds fewer GPU-hours than HPA on each, and its mean
/// share is at most `margin` under HPA's.
fn slo_only_slow_ramp_beats_hpa(slo: &[&str], margin: f64) {
    let (mut shares, mut hpa_shares) = (0.0, 0.0);
    for seed in ["1", "2", "3"] {
        let slo_only = "tests/fixtures/traces/model-slo.toml";
        let (out, g, h) = gpufleet_against("slow-ramp", seed, "3h", slo_only, "hpa", slo);
        assert!(hours(&g) < hours(&h), "seed {seed}: {out}");
        shares += share(&g);
        hpa_shares += share(&h);
    }
    assert!(
        shares / 3.0 >= hpa_shares / 3.0 - margin,
        "mean share {} against HPA's {}",
        shares / 3.0,
        hpa_shares / 3.0
    );
}

#[test]
fn a_time_to_first_token_slo_longer_than_a_service_still_keeps_slots_free() {
    // Three hours of a steady climb with 5 s requests and a 5 s TTFT SLO,
    // on a spec with no target of its own. An SLO that long let the
    // slots "work off a queue" of every slot per replica: replicas ran
    // full, a queue that never settled (99.79-99.91% against HPA's
    // 99.99-100% over six hours); the M/M/c queue with a heavy-tailed wait
    // keeps a few slots free, still at fewer GPU-hours than HPA (the old
    // rule's mean was 0.28 pp under HPA's).
    slo_only_slow_ramp_beats_hpa(&["--slo-kind", "ttft", "--slo", "5s"], 0.001);
}

#[test]
fn flags_out_of_range_are_usage_errors_and_a_missing_file_is_not() {
    for bad in [
        &["--duration", "0s"][..],
        &["--peak-rps", "0"],
        &["--concurrency", "0"],
        &["--decode-tps", "0"],
        &["--gpu-memory", "1GiB"],
    ] {
        let o = simulate(&[&["--synthetic", "diurnal", "--model", MODEL][..], bad].concat());
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {err}");
        assert!(err.contains("allowed"), "{bad:?}: {err}");
    }
    let o = simulate(&["--synthetic", "diurnal", "--duration", "10m"]);
    assert_eq!(o.status.code(), Some(2), "--model is needed");
    let o = simulate(&[
        "--synthetic",
        "diurnal",
        "--model",
        "/nonexistent/model.toml",
    ]);
    assert_eq!(o.status.code(), Some(1), "a file that cannot be read");
}
