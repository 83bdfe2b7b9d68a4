//! `gpufleet coordinator status`: the coordinators sharing a store, which
//! one leads and under what epoch, and whether etcd answers.

use super::client::{connect, ClientArgs};
use super::output::{print_data, Output};
use crate::api::HaStatus;
use crate::wire::pb;

pub async fn status(client: &ClientArgs, output: Output) -> anyhow::Result<()> {
    let mut c = connect(client).await?;
    let s: HaStatus = c
        .get_coordinator_status(pb::GetCoordinatorStatusRequest {})
        .await
        .map_err(super::client::status_error)?
        .into_inner()
        .into();
    if output.is_data() {
        return print_data(&s, output);
    }
    if s.backend == "redb" {
        println!("one coordinator, store: redb (no leader election)");
        return Ok(());
    }
    match s.leader.as_str() {
        "" => println!("leader: none (an election is under way, or etcd is unreachable)"),
        l => println!("leader: {l} (epoch {})", s.epoch),
    }
    println!("prefix: {}", s.prefix);
    println!("\n{:<24} {:<10} ADDRESS", "MEMBER", "ROLE");
    for m in &s.members {
        println!("{:<24} {:<10} {}", m.name, m.role, m.address);
    }
    println!("\n{:<32} {:<8} DETAIL", "ETCD ENDPOINT", "HEALTHY");
    for e in &s.store {
        println!(
            "{:<32} {:<8} {}",
            e.endpoint,
            if e.healthy { "yes" } else { "no" },
            e.detail
        );
    }
    Ok(())
}
