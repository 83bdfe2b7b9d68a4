//! Every model spec rule, with the message an operator would see.

use super::*;
use proptest::prelude::*;

const BASE: &str = r#"name = "llama-3-8b"
weights = "/srv/models/llama"

[server]
preset = "vllm"
command = ["/opt/vllm/bin/vllm", "serve", "{weights}", "--port", "{port}"]
gpu_memory = "20GiB"
"#;

fn ok(src: &str) -> ModelSpec {
    ModelSpec::parse(src).unwrap_or_else(|e| panic!("{e}\n---\n{src}"))
}

fn err(src: &str) -> String {
    match ModelSpec::parse(src) {
        Ok(spec) => panic!("accepted: {spec:?}\n---\n{src}"),
        Err(e) => e.to_string(),
    }
}

/// BASE with `line` added to the table `table` ("" for top level).
fn with(table: &str, line: &str) -> String {
    if table.is_empty() {
        format!("{line}\n{BASE}")
    } else if table == "server" {
        format!("{BASE}{line}\n")
    } else {
        format!("{BASE}\n[{table}]\n{line}\n")
    }
}

fn scaling(lines: &str) -> String {
    format!("{BASE}\n[scaling]\nmax_replicas = 4\n{lines}\n")
}

#[test]
fn defaults_fill_what_the_spec_leaves_out() {
    let s = ok(BASE);
    assert_eq!(s.replicas, 1);
    assert!(s.scaling.is_none());
    assert_eq!(s.server.gpus, 1);
    assert_eq!(s.server.ready_timeout, Duration::from_secs(20 * 60));
    assert_eq!(s.server.stop_timeout, Duration::from_secs(30));
    assert!(s.server.env.is_empty());
    assert_eq!(s.warm.mode, WarmMode::Off);
    assert_eq!(s.warm.standby_nodes, 0);
    let no_preset = BASE.replace("preset = \"vllm\"\n", "");
    assert_eq!(ok(&no_preset).server.preset, Preset::Generic);
}

#[test]
fn scaling_defaults_follow_the_design() {
    let c = ok(&scaling("")).scaling.unwrap();
    assert_eq!((c.min_replicas, c.max_replicas), (1, 4));
    assert_eq!(c.target_ongoing_requests, 8.0);
    assert_eq!(c.stable_window, Duration::from_secs(60));
    assert_eq!(c.panic_window, Duration::from_secs(6));
    assert_eq!(c.panic_threshold, 2.0);
    assert_eq!(c.tolerance, 0.1);
    assert_eq!(c.scale_down_delay, Duration::from_secs(300));
    assert_eq!(c.scale_to_zero_after, Duration::from_secs(900));
    assert_eq!(c.max_scale_down_step, 1);
    assert!(
        c.prescale,
        "on by default: only while the forecast has earned it"
    );
    assert_eq!(c.max_p95_latency, None);
    assert_eq!(c.target_gpu_utilization, None);
}

#[test]
fn unknown_key_names_line_and_allowed_keys() {
    let src = BASE.replace("weights =", "replicass = 3\nweights =");
    assert_eq!(
        err(&src),
        "line 2: unknown key `replicass` in the model spec; allowed keys: name, weights, replicas, spread, server, scaling, warm"
    );
    let e = err(&scaling("stable_windw = \"1s\""));
    assert!(e.starts_with("line 11: unknown key `stable_windw` in [scaling]; allowed keys: min_replicas, max_replicas"), "{e}");
    let e = err(&with("server", "gpu = 2"));
    assert!(
        e.contains("unknown key `gpu` in [server]") && e.contains("gpus"),
        "{e}"
    );
}

#[test]
fn name_rules() {
    for bad in [
        "my model",
        "Llama",
        "-llama",
        "llama-",
        "",
        "a_b",
        &"a".repeat(64),
    ] {
        let e = err(&BASE.replace("llama-3-8b", bad));
        assert!(e.starts_with("line 1: name `"), "{e}");
        assert!(
            e.contains("allowed: 1-63 characters of a-z, 0-9 and -"),
            "{e}"
        );
    }
    ok(&BASE.replace("llama-3-8b", &"a".repeat(63)));
    ok(&BASE.replace("llama-3-8b", "7"));
    let e = err(&BASE.replace("name = \"llama-3-8b\"\n", ""));
    assert!(e.starts_with("name is required"), "{e}");
}

#[test]
fn weights_must_be_an_absolute_path() {
    let e = err(&BASE.replace("/srv/models/llama", "models/llama"));
    assert!(
        e.contains("weights `models/llama` must be an absolute path"),
        "{e}"
    );
    let e = err(&BASE.replace("/srv/models/llama", ""));
    assert!(e.contains("weights `` must be an absolute path"), "{e}");
    let e = err(&BASE.replace("weights = \"/srv/models/llama\"\n", ""));
    assert!(e.starts_with("weights is required"), "{e}");
}

#[test]
fn replicas_or_scaling_not_both() {
    let e = err(&format!("replicas = 2\n{}", scaling("")));
    assert_eq!(
        e,
        "line 1: use either replicas = N or a [scaling] table, not both"
    );
    assert_eq!(ok(&with("", "replicas = 0")).replicas, 0);
    assert_eq!(ok(&with("", "replicas = 1000")).max_replicas(), 1000);
    let e = err(&with("", "replicas = 1001"));
    assert_eq!(
        e,
        "line 1: replicas = 1001 is out of range; allowed: 0..=1000"
    );
    let e = err(&with("", "replicas = -1"));
    assert_eq!(e, "line 1: replicas = -1 must be ≥ 0; allowed: 0..=1000");
}

#[test]
fn command_must_name_a_program() {
    for bad in ["command = []", "command = [\"\", \"x\"]"] {
        let src = BASE.replace(
            "command = [\"/opt/vllm/bin/vllm\", \"serve\", \"{weights}\", \"--port\", \"{port}\"]",
            bad,
        );
        let e = err(&src);
        assert!(
            e.starts_with("line 6: server.command must name a program"),
            "{e}"
        );
    }
    let e = err(&BASE.replace("\"{port}\"]", "\"{port}\", 3]"));
    assert!(
        e.ends_with("server.command[5] must be a string, not integer `3`"),
        "{e}"
    );
    let e = err(&with("server", "command = \"vllm serve\""));
    assert!(e.ends_with("duplicate key `command`"), "{e}");
}

#[test]
fn unknown_placeholders_are_named_with_the_allowed_ones() {
    let e = err(&BASE.replace("\"{port}\"]", "\"{port}\", \"--name\", \"{model_name}\"]"));
    assert_eq!(
        e,
        "line 6: server.command[6] uses unknown placeholder `{model_name}`; allowed: {port}, {metrics_port}, {weights}, {gpus}, {gpu_count}, {replica_id}, {model}"
    );
    let e = err(&with("server", "env = { MODEL = \"{name}\" }"));
    assert!(
        e.contains("server.env.MODEL uses unknown placeholder `{name}`"),
        "{e}"
    );
    // JSON arguments are not placeholders.
    let s = ok(&BASE.replace(
        "\"{port}\"]",
        "\"{port}\", \"--hf-overrides\", '{\"rope\": {}}', \"{replica_id}-{gpu_count}\"]",
    ));
    assert_eq!(s.server.command.len(), 8);
}

#[test]
fn env_keys_must_be_variable_names() {
    let e = err(&with("server", "env = { \"1BAD\" = \"x\" }"));
    assert!(
        e.contains("server.env key `1BAD` is not a variable name"),
        "{e}"
    );
    let e = err(&with("server", "env = { \"A-B\" = \"x\" }"));
    assert!(e.contains("`A-B`"), "{e}");
    let s = ok(&with("server", "env = { _A1 = \"{gpus}\" }"));
    assert_eq!(s.server.env["_A1"], "{gpus}");
    let e = err(&with("server", "env = { A = 1 }"));
    assert!(e.contains("server.env.A must be a string"), "{e}");
}

#[test]
fn gpus_are_zero_to_sixteen() {
    assert_eq!(ok(&with("server", "gpus = 16")).server.gpus, 16);
    let e = err(&with("server", "gpus = 17"));
    assert!(
        e.ends_with("server.gpus = 17 is out of range; allowed: 0..=16"),
        "{e}"
    );
    let e = err(&with("server", "gpus = -2"));
    assert!(
        e.ends_with("server.gpus = -2 must be ≥ 0; allowed: 0..=16"),
        "{e}"
    );
    let e = err(&with("server", "gpus = \"two\""));
    assert!(
        e.contains("server.gpus must be a whole number, not string"),
        "{e}"
    );
    let e = err(&with("server", "gpus = 1.5"));
    assert!(e.contains("server.gpus must be a whole number"), "{e}");
}

#[test]
fn gpu_memory_is_a_size_up_to_one_tib() {
    let e = err(&BASE.replace("\"20GiB\"", "\"20 GB?\""));
    assert_eq!(
        e,
        "line 7: server.gpu_memory `20 GB?` is not a size; use e.g. \"20GiB\", \"512MiB\" or \"80GB\""
    );
    let e = err(&BASE.replace("\"20GiB\"", "\"0\""));
    assert!(
        e.contains("server.gpu_memory = \"0\" is out of range"),
        "{e}"
    );
    let e = err(&BASE.replace("\"20GiB\"", "\"2TiB\""));
    assert!(e.contains("up to 1TiB"), "{e}");
    assert_eq!(
        ok(&BASE.replace("\"20GiB\"", "\"1TiB\""))
            .server
            .gpu_memory_bytes,
        1 << 40
    );
    let e = err(&BASE.replace("gpu_memory = \"20GiB\"\n", ""));
    assert!(e.starts_with("server.gpu_memory is required"), "{e}");
}

#[test]
fn timeouts_have_bounds() {
    let e = err(&with("server", "ready_timeout = \"500ms\""));
    assert!(
        e.ends_with("server.ready_timeout = \"500ms\" is out of range; allowed: 1s..=1day"),
        "{e}"
    );
    let e = err(&with("server", "ready_timeout = \"2days\""));
    assert!(e.contains("server.ready_timeout"), "{e}");
    assert_eq!(
        ok(&with("server", "ready_timeout = \"24h\""))
            .server
            .ready_timeout,
        DAY
    );
    let e = err(&with("server", "stop_timeout = \"2h\""));
    assert!(
        e.ends_with("server.stop_timeout = \"2h\" is out of range; allowed: 1s..=1h"),
        "{e}"
    );
    let e = err(&with("server", "stop_timeout = \"soon\""));
    assert!(
        e.contains("server.stop_timeout `soon` is not a duration"),
        "{e}"
    );
    let e = err(&with("server", "stop_timeout = 30"));
    assert!(e.contains("server.stop_timeout must be a string"), "{e}");
}

#[test]
fn paths_must_start_with_a_slash() {
    let e = err(&with("server", "health_path = \"health\""));
    assert!(
        e.contains("server.health_path `health` must be an HTTP path"),
        "{e}"
    );
    let s = ok(&with("server", "metrics_path = \"/stats\""));
    assert_eq!(s.metrics_path(), "/stats");
}

#[test]
fn presets_and_warm_modes_list_what_is_allowed() {
    let e = err(&BASE.replace("\"vllm\"", "\"vlm\""));
    assert_eq!(
        e,
        "line 5: server.preset: unknown preset `vlm`; allowed: vllm, tgi, triton, sglang, llamacpp, generic"
    );
    let e = err(&with("warm", "mode = \"hot\""));
    assert!(
        e.ends_with("warm.mode: unknown warm mode `hot`; allowed: off, standby, predictive"),
        "{e}"
    );
}

#[test]
fn warm_policy_rules() {
    let w = ok(&with("warm", "mode = \"standby\"")).warm;
    assert_eq!((w.mode, w.standby_nodes), (WarmMode::Standby, 1));
    let w = ok(&with("warm", "mode = \"predictive\"\nstandby_nodes = 64")).warm;
    assert_eq!(w.standby_nodes, 64);
    let e = err(&with("warm", "mode = \"standby\"\nstandby_nodes = 65"));
    assert!(
        e.ends_with("warm.standby_nodes = 65 is out of range; allowed: 0..=64"),
        "{e}"
    );
    let e = err(&with("warm", "standby_nodes = 2"));
    assert!(
        e.contains("warm.standby_nodes has no effect with warm.mode = \"off\""),
        "{e}"
    );
}

#[test]
fn replica_bounds() {
    let e = err(&scaling("").replace("max_replicas = 4", "max_replicas = 100000"));
    assert_eq!(
        e,
        "line 10: scaling.max_replicas = 100000 is out of range; allowed: 1..=1000"
    );
    let e = err(&scaling("").replace("max_replicas = 4", "max_replicas = 0"));
    assert!(e.ends_with("allowed: 1..=1000"), "{e}");
    let e = err(&scaling("min_replicas = 5"));
    assert!(
        e.ends_with("scaling.min_replicas = 5 is out of range; allowed: 0..=4"),
        "{e}"
    );
    let e = err(&scaling("min_replicas = -1"));
    assert!(
        e.ends_with("scaling.min_replicas = -1 must be ≥ 0; allowed: 0..=4"),
        "{e}"
    );
    let e = err(&scaling("").replace("max_replicas = 4", "min_replicas = 1"));
    assert!(e.starts_with("scaling.max_replicas is required"), "{e}");
    assert_eq!(ok(&scaling("min_replicas = 0")).min_replicas(), 0);
}

#[test]
fn scaling_targets() {
    let e = err(&scaling("target_ongoing_requests = 0"));
    assert!(
        e.ends_with("scaling.target_ongoing_requests = 0 must be > 0; allowed: (0, 100000]"),
        "{e}"
    );
    let e = err(&scaling("target_ongoing_requests = 100001"));
    assert!(e.contains("is out of range"), "{e}");
    let e = err(&scaling("target_ongoing_requests = nan"));
    assert!(e.contains("scaling.target_ongoing_requests = NaN"), "{e}");
    assert_eq!(
        ok(&scaling("target_ongoing_requests = 2.5"))
            .scaling
            .unwrap()
            .target_ongoing_requests,
        2.5
    );
    let e = err(&scaling("target_gpu_utilization = 1.2"));
    assert!(
        e.ends_with("scaling.target_gpu_utilization = 1.2 is out of range; allowed: (0, 1]"),
        "{e}"
    );
    let e = err(&scaling("target_kv_cache_usage = -0.5"));
    assert!(e.contains("must be > 0"), "{e}");
    let c = ok(&scaling(
        "target_gpu_utilization = 1\nmax_p95_latency = \"2s\"",
    ))
    .scaling
    .unwrap();
    assert_eq!(c.target_gpu_utilization, Some(1.0));
    assert_eq!(c.max_p95_latency, Some(Duration::from_secs(2)));
}

#[test]
fn scaling_windows() {
    let c = ok(&scaling(
        "stable_window = \"2s\"\npanic_window = \"500ms\"\nscale_down_delay = \"0s\"",
    ))
    .scaling
    .unwrap();
    assert_eq!(c.stable_window, Duration::from_secs(2));
    assert_eq!(c.scale_down_delay, Duration::ZERO);
    let e = err(&scaling("stable_window = \"5s\"\npanic_window = \"10s\""));
    assert!(
        e.ends_with(
            "scaling.panic_window (10s) must not be longer than scaling.stable_window (5s)"
        ),
        "{e}"
    );
    let e = err(&scaling("stable_window = \"0s\""));
    assert!(
        e.contains("scaling.stable_window = \"0s\" is out of range"),
        "{e}"
    );
    let e = err(&scaling("scale_down_delay = \"25h\""));
    assert!(e.contains("allowed: 0s..=1day"), "{e}");
    let e = err(&scaling("scale_to_zero_after = \"8days\""));
    assert!(
        e.contains("scaling.scale_to_zero_after = \"8days\" is out of range; allowed: 1s..=7days"),
        "{e}"
    );
}

#[test]
fn panic_threshold_tolerance_and_step() {
    let e = err(&scaling("panic_threshold = 1.0"));
    assert!(e.ends_with("allowed: 1.1..=10"), "{e}");
    let e = err(&scaling("tolerance = -0.1"));
    assert!(
        e.ends_with("scaling.tolerance = -0.1 must be ≥ 0; allowed: 0..=0.5"),
        "{e}"
    );
    let e = err(&scaling("max_scale_down_step = 0"));
    assert!(e.ends_with("allowed: 1..=1000"), "{e}");
    let c = ok(&scaling("prescale = true\nmax_scale_down_step = 3"))
        .scaling
        .unwrap();
    assert!(c.prescale);
    assert_eq!(c.max_scale_down_step, 3);
}

#[test]
fn an_slo_bounds_end_to_end_latency_unless_its_kind_says_time_to_first_token() {
    let c = ok(&scaling("slo = \"10s\"")).scaling.unwrap();
    assert_eq!(
        (c.slo, c.slo_kind),
        (Some(Duration::from_secs(10)), SloKind::E2e)
    );
    let c = ok(&scaling("slo = \"2s\"\nslo_kind = \"ttft\""))
        .scaling
        .unwrap();
    assert_eq!(
        (c.slo, c.slo_kind),
        (Some(Duration::from_secs(2)), SloKind::Ttft)
    );
    let spec = ok(&scaling("slo = \"1500ms\"\nslo_kind = \"ttft\""));
    assert_eq!(ok(&spec.to_toml()), spec, "the kind survives to_toml");
    let e = err(&scaling("slo = \"2s\"\nslo_kind = \"p99\""));
    assert!(
        e.ends_with(
            "scaling.slo_kind: unknown SLO kind `p99`; allowed: e2e (arrival to last token), ttft (time to first token)"
        ),
        "{e}"
    );
    let e = err(&scaling("slo_kind = \"ttft\""));
    assert!(
        e.ends_with(
            "scaling.slo_kind has no effect without scaling.slo; set slo = \"2s\" (say) too"
        ),
        "{e}"
    );
    let e = err(&scaling("slo = \"0s\"\nslo_kind = \"ttft\""));
    assert!(
        e.ends_with("scaling.slo = \"0s\" is out of range; allowed: 1ms..=1h"),
        "{e}"
    );
    let e = err(&scaling("slo = \"-2s\"\nslo_kind = \"ttft\""));
    assert!(e.contains("scaling.slo `-2s` is not a duration"), "{e}");
}

#[test]
fn broken_toml_says_where() {
    let e = err("name = \"x\"\nweights = \n");
    assert!(e.starts_with("line 2: not valid TOML"), "{e}");
    let e = err("server = 3\n");
    assert!(e.contains("server must be a table"), "{e}");
}

#[test]
fn to_toml_reads_back_to_the_same_spec() {
    let examples = [
        include_str!("../../packaging/examples/demo.toml"),
        include_str!("../../packaging/examples/llama.toml"),
    ];
    for src in examples {
        let spec = ok(src);
        assert_eq!(ok(&spec.to_toml()), spec);
    }
    let mut spec = ok(&with("", "replicas = 3"));
    spec.server.gpu_memory_bytes = 3 * (1 << 20) + 5;
    spec.server.ready_timeout = Duration::from_millis(61_500);
    assert_eq!(ok(&spec.to_toml()), spec);
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(src in "\\PC*") {
        let _ = ModelSpec::parse(&src);
    }

    #[test]
    fn mangled_specs_never_panic(cut in 0usize..400, insert in "[=\\[\\]\"{}a-z0-9 \\n.-]{0,12}") {
        let mut src = BASE.to_string();
        let at = src.char_indices().map(|(i, _)| i).nth(cut % BASE.len()).unwrap_or(0);
        src.insert_str(at, &insert);
        let _ = ModelSpec::parse(&src);
    }
}

#[test]
fn a_latency_target_needs_a_preset_that_reports_latency() {
    let spec = "name = \"m\"\nweights = \"/srv/m\"\n[server]\npreset = \"llamacpp\"\ncommand = [\"/opt/llama-server\", \"--port\", \"{port}\"]\ngpu_memory = \"8GiB\"\n[scaling]\nmax_replicas = 2\nmax_p95_latency = \"2s\"\n";
    let e = err(spec);
    assert!(
        e.contains("scaling.max_p95_latency") && e.contains("llamacpp"),
        "{e}"
    );
    ok(&spec.replace("llamacpp", "vllm"));
}

#[test]
fn a_kv_cache_target_needs_a_preset_that_reports_kv_cache_use() {
    let spec = |preset: &str| {
        format!("name = \"m\"\nweights = \"/srv/m\"\n[server]\npreset = \"{preset}\"\ncommand = [\"/opt/serve\", \"--metrics\", \"--enable-metrics\"]\ngpu_memory = \"8GiB\"\n[scaling]\nmax_replicas = 2\ntarget_kv_cache_usage = 0.8\n")
    };
    for preset in ["llamacpp", "tgi"] {
        let e = err(&spec(preset));
        assert!(
            e.contains("scaling.target_kv_cache_usage")
                && e.contains(&format!("the {preset} preset exports none"))
                && e.contains("it exports waiting, running"),
            "{e}"
        );
    }
    for preset in ["vllm", "sglang", "triton", "generic"] {
        ok(&spec(preset));
    }
}

#[test]
fn apply_warns_when_the_command_lacks_the_metrics_flag() {
    let spec = |preset: &str, flag: &str| {
        ModelSpec::parse(&format!("name = \"m\"\nweights = \"/srv/m\"\n[server]\npreset = \"{preset}\"\ncommand = [\"/opt/serve\", \"--port\", \"{{port}}\"{flag}]\ngpu_memory = \"8GiB\"\nmax_concurrency = 8\n")).unwrap()
    };
    let w = spec("llamacpp", "").warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("no --metrics"), "{w:?}");
    assert!(spec("llamacpp", ", \"--metrics\"").warnings().is_empty());
    let w = spec("sglang", "").warnings();
    assert!(w[0].contains("--enable-metrics"), "{w:?}");
    assert!(spec(
        "sglang",
        ", \"--enable-metrics\", \"--served-model-name\", \"m\""
    )
    .warnings()
    .is_empty());
    assert!(spec("vllm", ", \"--served-model-name\", \"{model}\"")
        .warnings()
        .is_empty());
    let w = spec("triton", "").warnings();
    assert!(w[0].contains("never passes it"), "{w:?}");
    let with_port = spec("triton", ", \"--metrics-port\", \"{metrics_port}\"");
    assert!(with_port.warnings().is_empty());
}

#[test]
fn apply_warns_when_vllm_or_sglang_would_refuse_the_models_name() {
    let spec = |preset: &str, args: &str| {
        ModelSpec::parse(&format!("name = \"llama\"\nweights = \"/srv/m\"\n[server]\npreset = \"{preset}\"\ncommand = [\"/opt/serve\", \"--port\", \"{{port}}\"{args}]\ngpu_memory = \"8GiB\"\nmax_concurrency = 8\n")).unwrap().warnings()
    };
    let w = spec("vllm", "");
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("has no --served-model-name")
            && w[0].contains("refuses requests naming `llama`")
            && w[0].contains("add \"--served-model-name\", \"{model}\""),
        "{w:?}"
    );
    let w = spec("vllm", ", \"--served-model-name\", \"meta-llama/Llama-3\"");
    assert!(
        w[0].contains(
            "--served-model-name meta-llama/Llama-3 does not include the model's name `llama`"
        ),
        "{w:?}"
    );
    // The model's name among several, literal or as {model}, either form.
    for ok in [
        ", \"--served-model-name\", \"meta-llama/Llama-3\", \"llama\", \"--seed\", \"1\"",
        ", \"--served-model-name={model}\"",
        ", \"--served-model-name\", \"{model}\"",
    ] {
        assert!(spec("vllm", ok).is_empty(), "{ok}: {:?}", spec("vllm", ok));
    }
    // A flag's value after the names is not one of them.
    let w = spec(
        "vllm",
        ", \"--served-model-name\", \"x\", \"--seed\", \"llama\"",
    );
    assert!(w[0].contains("--served-model-name x does not"), "{w:?}");
    // Engines that take any name are not warned about.
    for preset in ["tgi", "generic"] {
        assert!(spec(preset, "").is_empty(), "{preset}");
    }
}

#[test]
fn a_replicas_concurrency_is_the_specs_else_the_engines_batch_flag() {
    let spec = |preset: &str, args: &str, server: &str| {
        ModelSpec::parse(&format!("name = \"m\"\nweights = \"/srv/m\"\n[server]\npreset = \"{preset}\"\ncommand = [\"/opt/serve\", \"--port\", \"{{port}}\", \"--served-model-name\", \"m\"{args}]\ngpu_memory = \"8GiB\"\n{server}")).unwrap()
    };
    let s = spec("vllm", ", \"--max-num-seqs\", \"64\"", "");
    assert_eq!(s.replica_concurrency(), Some(64));
    assert!(s.warnings().is_empty(), "{:?}", s.warnings());
    for (preset, args) in [
        ("vllm", ", \"--max_num_seqs=32\""),
        (
            "sglang",
            ", \"--max-running-requests\", \"32\", \"--enable-metrics\"",
        ),
        ("tgi", ", \"--max-concurrent-requests\", \"32\""),
    ] {
        assert_eq!(
            spec(preset, args, "").replica_concurrency(),
            Some(32),
            "{preset}"
        );
    }
    // The spec's own figure wins; engines with no such flag have none.
    let s = spec(
        "vllm",
        ", \"--max-num-seqs\", \"64\"",
        "max_concurrency = 16\n",
    );
    assert_eq!(s.replica_concurrency(), Some(16));
    assert_eq!(
        spec("llamacpp", ", \"--parallel\", \"4\"", "").replica_concurrency(),
        None
    );
    // Without either, gateways would hold a vLLM replica to their default:
    // said at apply, with the engine's own default.
    for args in ["", ", \"--max-num-seqs\", \"many\""] {
        let s = spec("vllm", args, "");
        assert_eq!(s.replica_concurrency(), None);
        let w = s.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("default_max_concurrency (8")
                && w[0].contains("--max-num-seqs: 256 by default")
                && w[0].contains("set server.max_concurrency"),
            "{w:?}"
        );
    }
}

#[test]
fn a_cpu_replica_asks_for_cpu_and_memory_instead_of_gpu_memory() {
    let cpu_base = BASE.replace("gpu_memory = \"20GiB\"", "gpus = 0\nmemory = \"4GiB\"");
    let s = ok(&cpu_base);
    assert_eq!(s.server.gpus, 0);
    assert_eq!(s.server.gpu_memory_bytes, 0);
    assert_eq!(s.server.cpu, 1.0, "one CPU unless it says");
    assert_eq!(s.server.memory_bytes, 4 << 30);
    assert_eq!(
        ok(&cpu_base.replace("gpus = 0", "gpus = 0\ncpu = 2.5"))
            .server
            .cpu,
        2.5
    );
    assert_eq!(ModelSpec::parse(&s.to_toml()).unwrap(), s);
    let e = err(&cpu_base.replace("memory = \"4GiB\"", ""));
    assert!(e.contains("server.memory is required with gpus = 0"), "{e}");
    let e = err(&cpu_base.replace("gpus = 0", "gpus = 0\ngpu_memory = \"1GiB\""));
    assert!(
        e.contains("with gpus = 0 the replica asks for cpu and memory"),
        "{e}"
    );
    let e = err(&cpu_base.replace("gpus = 0", "gpus = 0\ncpu = 0"));
    assert!(e.contains("server.cpu = 0 must be > 0"), "{e}");
    let e = err(&BASE.replace("gpu_memory = \"20GiB\"", ""));
    assert!(e.contains("or gpus = 0 for a CPU replica"), "{e}");
}

#[test]
fn metrics_port_is_the_server_port_a_second_one_or_a_number() {
    use crate::domain::MetricsPort;
    assert_eq!(ok(BASE).metrics_port(), MetricsPort::Server);
    let triton = ok(&BASE.replace("\"vllm\"", "\"triton\""));
    assert_eq!(
        triton.metrics_port(),
        MetricsPort::Second,
        "Triton serves metrics apart"
    );
    assert_eq!(
        triton.replica_spec("r", vec![0]).metrics_port,
        MetricsPort::Second
    );
    let own = ok(&with("server", "metrics_port = \"{metrics_port}\""));
    assert_eq!(own.metrics_port(), MetricsPort::Second);
    let fixed = ok(&with("server", "metrics_port = 9400"));
    assert_eq!(fixed.metrics_port(), MetricsPort::Fixed(9400));
    assert_eq!(ModelSpec::parse(&fixed.to_toml()).unwrap(), fixed);
    assert_eq!(ModelSpec::parse(&own.to_toml()).unwrap(), own);
    let back = ok(&BASE
        .replace("\"vllm\"", "\"triton\"")
        .replace("[server]", "[server]\nmetrics_port = \"{port}\""));
    assert_eq!(back.metrics_port(), MetricsPort::Server);
    let e = err(&with("server", "metrics_port = 0"));
    assert!(
        e.contains("server.metrics_port: `0` is not a metrics port"),
        "{e}"
    );
    let e = err(&with("server", "metrics_port = \"{other}\""));
    assert!(
        e.contains("allowed: \"{port}\", \"{metrics_port}\" or a port number"),
        "{e}"
    );
    // Placeholders in the command know the second port.
    ok(&BASE.replace(
        "\"{port}\"]",
        "\"{port}\", \"--metrics-port\", \"{metrics_port}\"]",
    ));
}
