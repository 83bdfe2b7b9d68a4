//! `gpufleet version`: what this binary is, and what the coordinator runs.

use serde::Serialize;

use super::client::{connect, ClientArgs};
use super::output::{print_data, Output};
use crate::wire::pb;

#[derive(Debug, Serialize)]
struct Versions {
    client: &'static str,
    /// The coordinator's version, or `None` when it could not be asked.
    coordinator: Option<String>,
    coordinator_url: String,
    /// Why the coordinator's version is missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    coordinator_error: Option<String>,
}

pub async fn run(client: &ClientArgs, output: Output) -> anyhow::Result<()> {
    let asked = async {
        let mut c = connect(client).await?;
        let v = c
            .get_version(pb::GetVersionRequest {})
            .await
            .map_err(super::client::status_error)?;
        anyhow::Ok(v.into_inner().version)
    }
    .await;
    let (coordinator, coordinator_error) = match asked {
        Ok(v) => (Some(v), None),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    let v = Versions {
        client: env!("CARGO_PKG_VERSION"),
        coordinator,
        coordinator_url: client.url().to_string(),
        coordinator_error,
    };
    if output.is_data() {
        return print_data(&v, output);
    }
    println!("gpufleet {}", v.client);
    match (&v.coordinator, &v.coordinator_error) {
        (Some(c), _) => println!("coordinator {c} at {}", v.coordinator_url),
        (None, Some(e)) => println!("coordinator: unknown ({e})"),
        (None, None) => {}
    }
    Ok(())
}
