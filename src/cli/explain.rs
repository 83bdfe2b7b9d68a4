//! `gpufleet explain MODEL`: why a model has the replicas it has.

use crate::api::Explanation;
use crate::wire::pb;

use super::client::{ask, ClientArgs};
use super::output::{opt, print_data, Output, Table};

pub async fn run(model: String, client: &ClientArgs, output: Output) -> anyhow::Result<()> {
    let e: Explanation = ask(
        client,
        pb::ModelRef { name: model },
        |mut c, r| async move { c.explain(r).await },
    )
    .await?
    .into();
    if output.is_data() {
        return print_data(&e, output);
    }
    println!("{}: {}\n", e.model, e.summary);
    if !e.signals.is_empty() {
        println!("Recent signals (one row per 10 ticks, newest last):");
        let mut t = Table::new(&[
            "TIME", "ONGOING", "P95", "GPU UTIL", "KV", "READY", "CURRENT", "DESIRED", "PANIC",
        ]);
        let n = e.signals.len();
        for (i, p) in e.signals.iter().enumerate() {
            if !(n - 1 - i).is_multiple_of(10) {
                continue;
            }
            t.row(vec![
                p.time.clone(),
                format!("{:.1}", p.ongoing),
                opt(p.p95_latency_s.map(|s| format!("{:.0}ms", s * 1000.0))),
                opt(p.gpu_utilization.map(|u| format!("{:.0}%", u * 100.0))),
                opt(p.kv_cache_usage.map(|u| format!("{:.0}%", u * 100.0))),
                p.ready.to_string(),
                p.current.to_string(),
                p.desired.to_string(),
                if p.panic { "yes".into() } else { "-".into() },
            ]);
        }
        t.print();
        println!();
    }
    println!("Decisions:");
    if e.decisions.is_empty() {
        println!("  none yet");
    }
    for d in &e.decisions {
        println!("  {}  {:<12} {}", d.time, d.kind, d.message);
    }
    Ok(())
}
