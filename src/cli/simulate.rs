//! `gpufleet simulate`: replay a trace (a file, per-second counts, or a
//! synthetic day) through gpufleet's autoscaling and the baselines, and print
//! the comparison as a table or JSON, optionally with an SVG chart.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::ArgGroup;

use crate::config::model::ModelSpec;
use crate::config::units::{format_bytes, format_duration, parse_duration, parse_size};
use crate::sim::plot::{self, Line};
use crate::sim::policies::PolicyKind;
use crate::sim::report::{PolicyReport, SloKind};
use crate::sim::serving::{FleetShape, ServingModel};
use crate::sim::synthetic::{DiurnalSpec, Synthetic, SyntheticKind};
use crate::sim::trace::{self, TimeUnit, TokenDefaults, TraceOptions};
use crate::sim::{self as simulation, Setup, SimError, Trace};

use super::output::{Output, Table};

/// Points per series in the plot.
const PLOT_BINS: usize = 288;

#[derive(Debug, Clone, clap::Args)]
#[command(group(ArgGroup::new("source").required(true).args(["trace", "counts", "synthetic"])))]
pub struct SimulateArgs {
    /// Request trace: CSV with a header (a TIMESTAMP column: `2023-11-16
    /// 18:15:46.68`, unix seconds, or seconds from the start; optional
    /// ContextTokens and GeneratedTokens columns, as in the Azure LLM
    /// inference trace, or BurstGPT's Request/Response tokens), or JSON lines
    /// (one object per request, as in the Mooncake trace: timestamp in ms,
    /// input_length, output_length).
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// What a numeric timestamp of --trace counts [default: as the column's
    /// name says (timestamp_ms), else ms for JSON lines' `timestamp`, else s].
    #[arg(long, value_enum)]
    pub time_unit: Option<TimeUnit>,
    /// Replay only the requests of this model from a trace of several (its
    /// `model` column or key, e.g. BurstGPT's `ChatGPT` or `GPT-4`).
    #[arg(long, value_name = "NAME")]
    pub trace_model: Option<String>,
    /// Per-second request counts: one integer per line, or `second,count`.
    #[arg(long, value_name = "FILE")]
    pub counts: Option<PathBuf>,
    /// Generate the trace instead of reading one.
    #[arg(long, value_enum)]
    pub synthetic: Option<SyntheticKind>,
    /// Length of a synthetic trace.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub duration: Duration,
    /// Peak of the synthetic day's curve, requests per second (bursts go above).
    #[arg(long, default_value_t = 20.0)]
    pub peak_rps: f64,
    /// Seed of the synthetic trace: the same seed gives the same requests.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Random bursts (1–10 min, 1.5–3× the rate) in the synthetic trace.
    #[arg(long, default_value_t = 0)]
    pub bursts: u32,
    /// Write the trace's requests as CSV (timestamp,context_tokens,generated_tokens).
    #[arg(long, value_name = "FILE")]
    pub write_trace: Option<PathBuf>,
    /// The model spec whose [scaling] and [warm] the gpufleet policy uses.
    #[arg(long, value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// Simulated fleet: NODESxGPUS.
    #[arg(long, default_value = "4x8", value_parser = parse_fleet)]
    pub fleet: (u32, u32),
    /// Memory of each simulated GPU.
    #[arg(long, default_value = "80GiB", value_parser = parse_size)]
    pub gpu_memory: u64,
    /// Requests one replica serves at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: u32,
    /// Prompt tokens per second, per request.
    #[arg(long, default_value_t = 5000.0)]
    pub prefill_tps: f64,
    /// Generated tokens per second, per request alone on its replica.
    #[arg(long, default_value_t = 50.0)]
    pub decode_tps: f64,
    /// Per-token slowdown per further request in a replica's batch: with b
    /// running, each goes at 1 / (1 + this × (b − 1)) of its speed alone
    /// (0.04: fitted to published vLLM sweeps; 0: no slowdown).
    #[arg(long, default_value_t = 0.04)]
    pub batch_slowdown: f64,
    /// Size of the model's weights.
    #[arg(long, default_value = "16GiB", value_parser = parse_size)]
    pub weights_size: u64,
    /// Shared storage bandwidth into one node (a cold start reads at this).
    #[arg(long, default_value = "1GiB/s", value_parser = parse_bandwidth)]
    pub storage_bw: f64,
    /// Page-cache bandwidth (a warm start reads at this).
    #[arg(long, default_value = "10GiB/s", value_parser = parse_bandwidth)]
    pub cache_bw: f64,
    /// Engine start-up after the weights are read.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub engine_init: Duration,
    /// Latency objective, of the kind --slo-kind says.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub slo: Duration,
    /// What the SLO bounds: e2e (arrival to last token) or ttft (arrival to
    /// first token: queueing plus prefill).
    #[arg(long, value_enum, default_value_t = SloKind::E2e)]
    pub slo_kind: SloKind,
    /// Autoscaled policies start with the replicas the first minute needs,
    /// not with their minimum, so the start-up transient does not decide.
    #[arg(long)]
    pub start_at_level: bool,
    /// Prompt tokens of requests whose trace does not say (mean, for synthetic traces).
    #[arg(long, default_value_t = 1000)]
    pub context_tokens: u32,
    /// Generated tokens of requests whose trace does not say (mean, for synthetic traces).
    #[arg(long, default_value_t = 200)]
    pub generated_tokens: u32,
    /// Policies to compare, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "gpufleet,hpa,knative,static-peak"
    )]
    pub policies: Vec<PolicyKind>,
    /// Write an SVG chart of load, replicas and p95 latency over time.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Set from the global `-o`.
    #[arg(skip)]
    pub output: Output,
}

fn parse_fleet(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("`{s}` is not a fleet; use NODESxGPUS, e.g. \"4x8\"");
    let (n, g) = s.trim().split_once(['x', 'X']).ok_or_else(bad)?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    let g: u32 = g.trim().parse().map_err(|_| bad())?;
    if n == 0 || g == 0 {
        return Err(format!("`{s}` has no GPUs; use at least 1x1"));
    }
    Ok((n, g))
}

/// A size per second: "1GiB/s", "500MB/s".
fn parse_bandwidth(s: &str) -> Result<f64, String> {
    let bytes = s
        .trim()
        .strip_suffix("/s")
        .ok_or_else(|| format!("`{s}` is not a bandwidth; use e.g. \"1GiB/s\" or \"500MB/s\""))?;
    let n = parse_size(bytes).map_err(|e| format!("{e} (in bandwidth `{s}`)"))?;
    if n == 0 {
        return Err(format!("`{s}` is no bandwidth; use more than 0 per second"));
    }
    Ok(n as f64)
}

fn read(path: &Path, what: &str) -> anyhow::Result<String> {
    fs::read_to_string(path).with_context(|| format!("cannot read the {what} {}", path.display()))
}

fn load_trace(args: &SimulateArgs) -> anyhow::Result<(Trace, String)> {
    let tokens = TokenDefaults {
        context_tokens: args.context_tokens,
        generated_tokens: args.generated_tokens,
    };
    if args.time_unit.is_some() && args.trace.is_none() {
        return Err(super::usage(
            "--time-unit applies to --trace only (counts files count seconds; synthetic traces are made in seconds)",
        ));
    }
    if args
        .trace_model
        .as_deref()
        .is_some_and(|m| m.trim().is_empty())
    {
        return Err(super::usage(
            "--trace-model is empty; give the name in the trace's model column (e.g. GPT-4)",
        ));
    }
    if args.trace_model.is_some() && args.trace.is_none() {
        return Err(super::usage(
            "--trace-model applies to --trace only (a trace with a model column)",
        ));
    }
    if let Some(path) = &args.trace {
        let opts = TraceOptions {
            tokens,
            time_unit: args.time_unit,
            model: args.trace_model.as_deref(),
        };
        let (t, layout) = trace::parse(&read(path, "trace")?, opts)
            .with_context(|| format!("in trace {}", path.display()))?;
        // On stderr, so that `-o json` stays one document: how the file was
        // read, which a wrong guess (a unit, a column) would otherwise hide.
        eprintln!(
            "read {} requests from {}: {}",
            t.requests.len(),
            path.display(),
            layout.describe(tokens)
        );
        return Ok((Trace::Requests(t), path.display().to_string()));
    }
    if let Some(path) = &args.counts {
        let c = trace::parse_counts(&read(path, "counts file")?, tokens)
            .with_context(|| format!("in counts file {}", path.display()))?;
        return Ok((Trace::Counts(c), path.display().to_string()));
    }
    let spec = DiurnalSpec {
        duration_s: args.duration.as_secs(),
        peak_rps: args.peak_rps,
        seed: args.seed,
        bursts: args.bursts,
        tokens,
    };
    let kind = args.synthetic.unwrap_or(SyntheticKind::Diurnal);
    let s = Synthetic::generate(kind, &spec).map_err(super::usage)?;
    let name = format!(
        "synthetic {} {}, peak {} req/s, seed {}, {} bursts",
        kind.as_str(),
        format_duration(args.duration),
        args.peak_rps,
        args.seed,
        args.bursts
    );
    Ok((Trace::Synthetic(s), name))
}

fn setup(args: &SimulateArgs) -> Setup {
    Setup {
        fleet: FleetShape {
            nodes: args.fleet.0,
            gpus_per_node: args.fleet.1,
            gpu_memory_bytes: args.gpu_memory,
        },
        serving: ServingModel {
            concurrency: args.concurrency,
            prefill_tps: args.prefill_tps,
            decode_tps: args.decode_tps,
            batch_slowdown: args.batch_slowdown,
            weights_bytes: args.weights_size,
            storage_bw: args.storage_bw,
            cache_bw: args.cache_bw,
            engine_init_s: args.engine_init.as_secs_f64(),
        },
        slo_s: args.slo.as_secs_f64(),
        slo_kind: args.slo_kind,
        start_at_level: args.start_at_level,
        bins: PLOT_BINS,
    }
}

pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let (trace, source) = load_trace(&args)?;
    if let Some(path) = &args.write_trace {
        let file = fs::File::create(path)
            .with_context(|| format!("cannot create the trace file {}", path.display()))?;
        let mut out = BufWriter::new(file);
        let n = trace::write_csv(trace.requests(), &mut out)
            .and_then(|n| out.flush().map(|()| n))
            .with_context(|| format!("cannot write the trace file {}", path.display()))?;
        eprintln!("wrote {n} requests to {}", path.display());
    }
    let Some(model_path) = &args.model else {
        if args.write_trace.is_some() {
            return Ok(());
        }
        return Err(super::usage(
            "--model FILE is required to simulate (the spec whose [scaling] and [warm] gpufleet uses)",
        ));
    };
    let spec = ModelSpec::parse(&read(model_path, "model spec")?)
        .with_context(|| format!("in model spec {}", model_path.display()))?;
    if args.policies.is_empty() {
        return Err(super::usage(
            "--policies is empty; allowed: gpufleet, hpa, knative, static-peak, oracle",
        ));
    }
    let setup = setup(&args);
    let started = Instant::now();
    let runs = simulation::compare(&trace, &spec, &setup, &args.policies).map_err(|e| match e {
        // Flags out of range, or a fleet the spec's replicas cannot fit.
        SimError::Setting { .. } | SimError::DoesNotFit { .. } => super::usage(e),
        other => other.into(),
    })?;
    let elapsed = started.elapsed();

    if let Some(path) = &args.plot {
        let lines: Vec<Line<'_>> = runs
            .iter()
            .filter(|r| r.report.policy != PolicyKind::Oracle.as_str())
            .map(|r| Line {
                policy: &r.report.policy,
                series: &r.series,
            })
            .collect();
        let title = format!("gpufleet simulate: {} on {source}", spec.name);
        fs::write(path, plot::svg(&title, &lines, setup.slo_s))
            .with_context(|| format!("cannot write the plot {}", path.display()))?;
    }
    let reports: Vec<&PolicyReport> = runs.iter().map(|r| &r.report).collect();
    match args.output.document(&reports)? {
        Some(doc) => print!("{doc}"),
        None => {
            println!(
                "{} on {source}; fleet {}x{} GPUs of {}; cold start {:.0}s, warm start {:.0}s; \
                 simulated in {:.2}s",
                spec.name,
                setup.fleet.nodes,
                setup.fleet.gpus_per_node,
                format_bytes(setup.fleet.gpu_memory_bytes),
                setup.serving.cold_start_s(),
                setup.serving.load_s(setup.serving.weights_bytes as f64),
                elapsed.as_secs_f64()
            );
            table(&reports, setup.slo_s, setup.slo_kind).print();
        }
    }
    Ok(())
}

fn table(reports: &[&PolicyReport], slo_s: f64, kind: SloKind) -> Table {
    let slo = format!(
        "IN SLO ({} {})",
        kind.as_str(),
        format_duration(Duration::from_secs_f64(slo_s))
    );
    let mut t = Table::new(&[
        "POLICY",
        "REQUESTS",
        &slo,
        "P50",
        "P95",
        "P99",
        "MEAN QUEUE",
        "GPU-HOURS",
        "VS ORACLE",
        "COLD",
        "WARM",
        "SCALE ACTIONS",
    ]);
    for r in reports {
        t.row(vec![
            r.policy.clone(),
            r.requests.to_string(),
            format!("{:.2}%", r.slo_share * 100.0),
            format!("{:.1}s", r.p50_s),
            format!("{:.1}s", r.p95_s),
            format!("{:.1}s", r.p99_s),
            format!("{:.2}s", r.mean_queue_s),
            format!("{:.2}", r.gpu_hours),
            r.gpu_hours_vs_oracle
                .map_or("-".to_string(), |x| format!("{x:.2}x")),
            r.cold_starts.to_string(),
            r.warm_starts.to_string(),
            r.scale_actions.to_string(),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleets_and_bandwidths_as_operators_write_them() {
        assert_eq!(parse_fleet("4x8"), Ok((4, 8)));
        assert_eq!(parse_fleet("16X2"), Ok((16, 2)));
        assert!(parse_fleet("4").unwrap_err().contains("NODESxGPUS"));
        assert!(parse_fleet("0x8").unwrap_err().contains("at least 1x1"));
        assert_eq!(parse_bandwidth("1GiB/s"), Ok(f64::from(1u32 << 30)));
        assert_eq!(parse_bandwidth("500MB/s"), Ok(5e8));
        assert!(parse_bandwidth("1GiB")
            .unwrap_err()
            .contains("not a bandwidth"));
        assert!(parse_bandwidth("0GiB/s").is_err());
    }
}
