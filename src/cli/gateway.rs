//! `gpufleet gateway status`: what one gateway holds and sends, per model
//! and per replica, read from its `/status`.

use anyhow::Context;

use crate::gateway::status::GatewayStatus;

use super::output::{Output, Table};

#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// The gateway's HTTP base URL.
    #[arg(
        long,
        env = "GPUFLEET_GATEWAY",
        default_value = "http://127.0.0.1:7470"
    )]
    pub gateway: String,
}

pub async fn run(args: StatusArgs, output: Output) -> anyhow::Result<()> {
    // Gateways serve plain HTTP (TLS, where used, ends in front of them).
    super::client::require_scheme("gateway", &args.gateway, &["http"])?;
    let url = format!("{}/status", args.gateway.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .context("building the HTTP client")?;
    let resp = client.get(&url).send().await.with_context(|| {
        format!("cannot reach the gateway at {url} (set --gateway or GPUFLEET_GATEWAY)")
    })?;
    if !resp.status().is_success() {
        anyhow::bail!("the gateway at {url} answered {}", resp.status());
    }
    let status: GatewayStatus = resp
        .json()
        .await
        .with_context(|| format!("{url} did not answer with a gateway status"))?;
    match output {
        Output::Table | Output::Wide => print!("{}", render(&status)),
        Output::Json | Output::Yaml => super::output::print_data(&status, output)?,
    }
    Ok(())
}

fn render(s: &GatewayStatus) -> String {
    let mut out = format!(
        "gateway {} → coordinator {} ({})\n\n",
        s.name,
        s.coordinator,
        if s.connected {
            "connected"
        } else {
            "not connected: routing on the last known replicas"
        }
    );
    let mut t = Table::new(&[
        "MODEL",
        "QUEUED",
        "IN-FLIGHT",
        "ARRIVALS/S",
        "DESIRED",
        "REPLICAS",
        "MAX/REPLICA",
    ]);
    for m in &s.models {
        t.row(vec![
            m.model.clone(),
            m.queued.to_string(),
            m.in_flight.to_string(),
            format!("{:.1}", m.arrivals_per_s),
            m.desired_replicas.to_string(),
            m.replicas.len().to_string(),
            m.max_concurrency.to_string(),
        ]);
    }
    out.push_str(&t.render());
    let mut r = Table::new(&[
        "REPLICA",
        "MODEL",
        "NODE",
        "ADDRESS",
        "IN-FLIGHT",
        "MAX",
        "ONGOING(SCRAPED)",
    ]);
    let mut any = false;
    for m in &s.models {
        for x in &m.replicas {
            any = true;
            r.row(vec![
                x.id.clone(),
                m.model.clone(),
                x.node.clone(),
                x.address.clone(),
                x.in_flight.to_string(),
                x.max_concurrency.to_string(),
                format!("{:.0}", x.ongoing_scraped),
            ]);
        }
    }
    if any {
        out.push('\n');
        out.push_str(&r.render());
    }
    out
}
