//! Agent settings: defaults, flags over the file, and every rule's message.

use super::*;
use proptest::prelude::*;

const PACKAGED: &str = include_str!("../../packaging/config/agent.toml");

fn load(src: &str) -> AgentConfig {
    AgentConfig::from_toml(src, &AgentOverrides::default()).unwrap_or_else(|e| panic!("{e}"))
}

fn err(src: &str) -> String {
    err_with(src, &AgentOverrides::default())
}

fn err_with(src: &str, o: &AgentOverrides) -> String {
    match AgentConfig::from_toml(src, o) {
        Ok(c) => panic!("accepted: {c:?}\n---\n{src}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn defaults_match_the_design() {
    let c = load("");
    assert!(
        !c.node_name.is_empty(),
        "node name defaults to the hostname"
    );
    assert_eq!(c.coordinators, vec!["http://127.0.0.1:7460"]);
    assert_eq!(c.state_dir, PathBuf::from("/var/lib/gpufleet"));
    assert_eq!(c.http_listen, "127.0.0.1:7462".parse().unwrap());
    assert_eq!(c.report_interval, Duration::from_secs(1));
    assert_eq!(c.scrape_interval, Duration::from_millis(500));
    assert_eq!(c.model_roots, vec![PathBuf::from("/srv/models")]);
    assert!(c.allowed_executables.is_empty());
    assert!(c.allowed_env.is_empty() && c.allowed_paths.is_empty());
    assert!(c.check_args);
    assert_eq!(c.run_as, None);
    assert!(!c.allow_root_replicas);
    assert_eq!(c.port_range, 20000..=20999);
    assert_eq!(c.gpu.backend, GpuBackend::Auto);
    assert_eq!(c.gpu.sample_interval, Duration::from_secs(1));
    assert_eq!(c.gpu.simulated_count, 4);
    assert_eq!(c.gpu.simulated_model, "Simulated H100 80GB");
    assert_eq!(c.gpu.simulated_memory_bytes, 80 << 30);
    assert_eq!(c.warm.budget, WarmBudget::Percent(50.0));
    assert!(!c.warm.lock);
    assert!(!c.tls.enabled());
}

#[test]
fn the_packaged_file_documents_the_defaults() {
    // All but run_as: the package creates gpufleet-models; an agent started
    // without the package has no such user to name.
    assert_eq!(
        load(PACKAGED),
        AgentConfig {
            run_as: Some("gpufleet-models".into()),
            ..load("")
        }
    );
}

#[test]
fn file_values_are_read() {
    let c = load(
        r#"node_name = "gpu-host-17.dc1"
coordinator = "https://coord:7460/"
report_interval = "250ms"
scrape_interval = "2s"
model_roots = ["/srv/models", "/mnt/nfs/models"]
allowed_executables = ["/opt/vllm/bin/vllm"]
run_as = "models"
port_range = "30000-30009"
labels = { rack = "r12", "gpu/gen" = "hopper" }
[gpu]
backend = "simulated"
simulated_count = 8
[warm]
budget = "200GiB"
lock = true
[tls]
ca = "/etc/gpufleet/ca.pem"
cert = "/etc/gpufleet/n.pem"
key = "/etc/gpufleet/n-key.pem"
[limits]
max_connections = 64
header_read_timeout = "2s"
"#,
    );
    assert_eq!(c.limits.max_connections, 64);
    assert_eq!(c.limits.header_read_timeout, Duration::from_secs(2));
    let e = err("[limits]\nmax_connections = 3\n");
    assert!(e.contains("limits.max_connections"), "{e}");
    let e = err("[limits]\nmax_agent_sessions = 10\n");
    assert!(e.contains("a coordinator setting"), "{e}");
    assert_eq!(c.node_name, "gpu-host-17.dc1");
    assert_eq!(c.coordinators, vec!["https://coord:7460"]);
    assert_eq!(c.report_interval, Duration::from_millis(250));
    assert_eq!(c.scrape_interval, Duration::from_secs(2));
    assert_eq!(c.model_roots.len(), 2);
    assert_eq!(c.run_as.as_deref(), Some("models"));
    assert_eq!(c.port_range, 30000..=30009);
    assert_eq!(c.labels["gpu/gen"], "hopper");
    assert_eq!(c.gpu.backend, GpuBackend::Simulated);
    assert_eq!(c.gpu.simulated_count, 8);
    assert_eq!(c.warm.budget, WarmBudget::Bytes(200 << 30));
    assert!(c.warm.lock);
    assert!(c.tls.enabled());
}

#[test]
fn flags_beat_the_file() {
    let src = r#"node_name = "from-file"
coordinator = "http://file:7460"
state_dir = "/file"
http_listen = "127.0.0.1:1"
[gpu]
backend = "nvml"
simulated_count = 2
"#;
    let o = AgentOverrides {
        config: None,
        coordinator: Some("http://flag:7460".into()),
        node_name: Some("from-flag".into()),
        state_dir: Some("/flag".into()),
        gpu_backend: Some(GpuBackend::Simulated),
        simulated_gpus: Some(6),
        http_listen: Some("127.0.0.1:2".parse().unwrap()),
    };
    let c = AgentConfig::from_toml(src, &o).unwrap();
    assert_eq!(c.node_name, "from-flag");
    assert_eq!(c.coordinators, vec!["http://flag:7460"]);
    assert_eq!(c.state_dir, PathBuf::from("/flag"));
    assert_eq!(c.http_listen.port(), 2);
    assert_eq!(c.gpu.backend, GpuBackend::Simulated);
    assert_eq!(c.gpu.simulated_count, 6);
    // A bad flag is named as the flag.
    let o = AgentOverrides {
        simulated_gpus: Some(500),
        ..Default::default()
    };
    let e = err_with("", &o);
    assert_eq!(
        e,
        "agent config: --simulated-gpus = 500 is out of range; allowed: 0..=64"
    );
}

#[test]
fn unknown_keys_name_file_line_and_allowed_keys() {
    let e = err("coordinator = \"http://c:7460\"\n\nreprot_interval = \"1s\"\n");
    assert!(
        e.starts_with("agent config: line 3: unknown key `reprot_interval` in the agent config; allowed keys: node_name, coordinator"),
        "{e}"
    );
    let e = err("[gpu]\nbakend = \"nvml\"\n");
    assert!(
        e.starts_with("agent config: line 2: unknown key `bakend` in [gpu]"),
        "{e}"
    );
}

#[test]
fn ranges_are_checked_with_their_line() {
    let e = err("[gpu]\nsimulated_count = 500\n");
    assert_eq!(
        e,
        "agent config: line 2: gpu.simulated_count = 500 is out of range; allowed: 0..=64"
    );
    let e = err("[gpu]\nsimulated_count = -1\n");
    assert!(
        e.ends_with("gpu.simulated_count = -1 must be ≥ 0; allowed: 0..=64"),
        "{e}"
    );
    let e = err("report_interval = \"2m\"\n");
    assert!(
        e.ends_with("report_interval = \"2m\" is out of range; allowed: 100ms..=1m"),
        "{e}"
    );
    let e = err("report_interval = \"10ms\"\n");
    assert!(e.contains("allowed: 100ms..=1m"), "{e}");
    let e = err("scrape_interval = \"0s\"\n");
    assert!(
        e.ends_with("scrape_interval = \"0s\" is out of range; allowed: 100ms..=1m"),
        "{e}"
    );
    let e = err("[gpu]\nsample_interval = \"often\"\n");
    assert!(
        e.contains("gpu.sample_interval `often` is not a duration"),
        "{e}"
    );
    let e = err("[gpu]\nsimulated_memory = \"0\"\n");
    assert!(
        e.contains("gpu.simulated_memory = \"0\" is out of range"),
        "{e}"
    );
}

#[test]
fn names_urls_and_addresses() {
    let e = err("node_name = \"gpu host\"\n");
    assert!(
        e.contains("node_name `gpu host` is invalid; allowed: 1-63 characters"),
        "{e}"
    );
    let o = AgentOverrides {
        node_name: Some(String::new()),
        ..Default::default()
    };
    assert!(err_with("", &o).contains("--node-name `` is invalid"));
    let e = err("coordinator = \"coord:7460\"\n");
    assert!(
        e.contains("coordinator `coord:7460` must be a URL starting with http:// or https://"),
        "{e}"
    );
    let e = err("http_listen = \"localhost\"\n");
    assert!(
        e.contains("http_listen `localhost` is not an address; use ip:port"),
        "{e}"
    );
    let e = err("state_dir = \"\"\n");
    assert!(e.contains("state_dir must not be empty"), "{e}");
    let e = err("[gpu]\nbackend = \"cuda\"\n");
    assert!(
        e.ends_with("gpu.backend: unknown GPU backend `cuda`; allowed: auto, nvml, simulated"),
        "{e}"
    );
}

#[test]
fn paths_must_be_absolute() {
    let e = err("model_roots = [\"models\"]\n");
    assert!(
        e.ends_with("line 1: model_roots entry `models` must be an absolute path"),
        "{e}"
    );
    let e = err("allowed_executables = [\"vllm\"]\n");
    assert!(
        e.contains("allowed_executables entry `vllm` must be an absolute path"),
        "{e}"
    );
    assert!(load("model_roots = []\n").model_roots.is_empty());
}

#[test]
fn launch_policy_settings_are_read_and_checked() {
    let c = load(
        "allowed_env = [\"PYTHONPATH\", \"LD_*\"]\nallowed_paths = [\"/var/cache/vllm\"]\ncheck_args = false\nallow_root_replicas = true\n",
    );
    assert_eq!(c.allowed_env, vec!["PYTHONPATH", "LD_*"]);
    assert_eq!(c.allowed_paths, vec![PathBuf::from("/var/cache/vllm")]);
    assert!(!c.check_args && c.allow_root_replicas);
    let e = err("allowed_env = [\"LD PRELOAD\"]\n");
    assert!(
        e.contains("allowed_env entry `LD PRELOAD` is invalid; allowed: a variable name"),
        "{e}"
    );
    let e = err("allowed_paths = [\"cache\"]\n");
    assert!(
        e.contains("allowed_paths entry `cache` must be an absolute path"),
        "{e}"
    );
}

#[test]
fn run_as_never_root() {
    let e = err("run_as = \"root\"\n");
    assert!(e.contains("run_as = \"root\" is refused"), "{e}");
    let e = err("run_as = \"a b\"\n");
    assert!(e.contains("run_as `a b` is not a user name"), "{e}");
    assert_eq!(load("run_as = \"  \"\n").run_as, None);
}

#[test]
fn port_ranges() {
    assert_eq!(
        load("port_range = \"40000-40000\"\n").port_range,
        40000..=40000
    );
    for bad in ["20999-20000", "80-90", "20000", "a-b", "20000-70000"] {
        let e = err(&format!("port_range = \"{bad}\"\n"));
        assert!(
            e.contains(&format!(
                "port_range `{bad}` is invalid; allowed: \"FIRST-LAST\""
            )),
            "{e}"
        );
    }
}

#[test]
fn labels_are_checked() {
    let e = err("[labels]\n\"bad key\" = \"x\"\n");
    assert!(e.contains("labels key `bad key` is invalid"), "{e}");
    let e = err("[labels]\nrack = 12\n");
    assert!(e.contains("labels.rack must be a string"), "{e}");
}

#[test]
fn warm_budget_is_a_percent_or_a_size() {
    assert_eq!(
        load("[warm]\nbudget = \"12.5%\"\n").warm.budget,
        WarmBudget::Percent(12.5)
    );
    for bad in ["0%", "150%", "-5%", "x%"] {
        let e = err(&format!("[warm]\nbudget = \"{bad}\"\n"));
        assert!(e.contains("allowed: a percent of RAM in (0%, 100%]"), "{e}");
    }
    let e = err("[warm]\nbudget = \"lots\"\n");
    assert!(
        e.contains("warm.budget `lots` is neither a percent nor a size"),
        "{e}"
    );
    assert_eq!(WarmBudget::Percent(50.0).bytes(1000), 500);
    assert_eq!(WarmBudget::Bytes(300).bytes(1000), 300);
    assert_eq!(WarmBudget::Bytes(3000).bytes(1000), 1000);
}

#[test]
fn tls_needs_all_three_files() {
    let e = err("[tls]\nca = \"/a/ca.pem\"\ncert = \"/a/c.pem\"\n");
    assert!(e.contains("tls.key must be set too"), "{e}");
}

#[test]
fn load_reads_the_given_file_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, "node_name = \"n1\"\n[gpu]\nsimulated_count = 99\n").unwrap();
    let o = AgentOverrides {
        config: Some(path.clone()),
        ..Default::default()
    };
    let e = AgentConfig::load(&o).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}: line 3: gpu.simulated_count = 99 is out of range; allowed: 0..=64",
            path.display()
        )
    );
    std::fs::write(&path, "node_name = \"n1\"\n").unwrap();
    assert_eq!(AgentConfig::load(&o).unwrap().node_name, "n1");
    let o = AgentOverrides {
        config: Some(dir.path().join("missing.toml")),
        ..Default::default()
    };
    let e = AgentConfig::load(&o).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }), "{e}");
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(src in "\\PC*") {
        let _ = AgentConfig::from_toml(&src, &AgentOverrides::default());
    }

    #[test]
    fn toml_shaped_text_never_panics(src in "(\\[[a-z]{1,6}\\]\n)?([a-z_]{1,16} = (\"[-0-9a-zA-Z%:./ ]{0,12}\"|-?[0-9]{1,6}|true)\n){0,4}") {
        let _ = AgentConfig::from_toml(&src, &AgentOverrides::default());
    }
}

#[test]
fn several_coordinators_as_a_list_or_a_comma_separated_flag() {
    let c = load(r#"coordinator = ["http://c1:7460", "http://c2:7460/", "http://c3:7460"]"#);
    assert_eq!(
        c.coordinators,
        vec!["http://c1:7460", "http://c2:7460", "http://c3:7460"]
    );
    let o = AgentOverrides {
        coordinator: Some("http://a:1,http://b:2".into()),
        ..Default::default()
    };
    let c = AgentConfig::from_toml("", &o).unwrap();
    assert_eq!(c.coordinators, vec!["http://a:1", "http://b:2"]);
    let e = AgentConfig::from_toml("coordinator = []", &AgentOverrides::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("coordinator is empty"), "{e}");
    let e = AgentConfig::from_toml(
        r#"coordinator = ["http://a:1", "https://b:2"]"#,
        &AgentOverrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("mixes http:// and https://"), "{e}");
    let e = AgentConfig::from_toml(r#"coordinator = ["c1:7460"]"#, &AgentOverrides::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("must be a URL"), "{e}");
}
