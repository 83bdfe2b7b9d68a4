//! A model's ready replicas as the coordinator publishes them on
//! `GET /v1/endpoints` (Prometheus http_sd JSON), kept fresh for the load
//! generator while it runs.

use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often the endpoint list is re-read while load runs.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum EndpointsError {
    #[error("cannot reach the coordinator at {url}: {source}; set --coordinator-http or GPUFLEET_COORDINATOR_HTTP")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the coordinator at {url} answered {status}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error(
        "the coordinator at {url} sent endpoints that are not Prometheus http_sd JSON: {source}"
    )]
    Malformed {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

/// One http_sd target group.
#[derive(Debug, Clone, Deserialize)]
pub struct TargetGroup {
    pub targets: Vec<String>,
    #[serde(default)]
    pub labels: HashMap<String, String>,
}

/// Base URLs (`http://host:port`) of `model`'s serving replicas, in the
/// order given; replicas marked retiring get nothing new.
pub fn model_base_urls(groups: &[TargetGroup], model: &str) -> Vec<String> {
    groups
        .iter()
        .filter(|g| g.labels.get("model").is_some_and(|m| m == model))
        .filter(|g| {
            g.labels
                .get("__meta_gpufleet_state")
                .is_none_or(|s| s != "retiring")
        })
        .flat_map(|g| {
            let scheme = g.labels.get("__scheme__").map_or("http", String::as_str);
            g.targets.iter().map(move |t| format!("{scheme}://{t}"))
        })
        .collect()
}

/// The endpoints URL of a coordinator's HTTP base URL.
pub fn endpoints_url(coordinator_http: &str) -> String {
    format!("{}/v1/endpoints", coordinator_http.trim_end_matches('/'))
}

pub async fn fetch_base_urls(
    client: &reqwest::Client,
    url: &str,
    model: &str,
) -> Result<Vec<String>, EndpointsError> {
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|source| EndpointsError::Unreachable {
            url: url.to_string(),
            source,
        })?;
    if !resp.status().is_success() {
        return Err(EndpointsError::Status {
            url: url.to_string(),
            status: resp.status(),
        });
    }
    let groups: Vec<TargetGroup> =
        resp.json()
            .await
            .map_err(|source| EndpointsError::Malformed {
                url: url.to_string(),
                source,
            })?;
    Ok(model_base_urls(&groups, model))
}

/// The latest known replica URLs of one model; the refresh task stops when
/// this is dropped.
pub struct EndpointWatch {
    latest: watch::Receiver<Arc<Vec<String>>>,
    refresher: JoinHandle<()>,
}

impl EndpointWatch {
    /// Reads the endpoints once (an unreachable coordinator is an error
    /// here, so a typo fails at once), then re-reads them every `every`. A
    /// later failed read keeps the last known list and is logged.
    pub async fn start(
        client: reqwest::Client,
        coordinator_http: &str,
        model: &str,
        every: Duration,
    ) -> Result<Self, EndpointsError> {
        let url = endpoints_url(coordinator_http);
        let model = model.to_string();
        let first = fetch_base_urls(&client, &url, &model).await?;
        let (tx, latest) = watch::channel(Arc::new(first));
        let refresher = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                match fetch_base_urls(&client, &url, &model).await {
                    Ok(urls) => {
                        tx.send_if_modified(|cur| {
                            let changed = **cur != urls;
                            if changed {
                                *cur = Arc::new(urls);
                            }
                            changed
                        });
                    }
                    Err(e) => tracing::warn!("keeping the last known replicas of {model}: {e}"),
                }
            }
        });
        Ok(Self { latest, refresher })
    }

    pub fn current(&self) -> Arc<Vec<String>> {
        self.latest.borrow().clone()
    }

    /// A receiver that is told whenever the replica list changes, for a
    /// request that waits for a replica to appear.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Vec<String>>> {
        self.latest.clone()
    }
}

impl Drop for EndpointWatch {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_models_targets_with_their_scheme() {
        let groups: Vec<TargetGroup> = serde_json::from_str(
            r#"[
              {"targets": ["127.0.0.1:20001", "10.0.0.2:20002"], "labels": {"model": "chat", "node": "a"}},
              {"targets": ["10.0.0.3:20003"], "labels": {"model": "embed"}},
              {"targets": ["10.0.0.4:443"], "labels": {"model": "chat", "__scheme__": "https"}},
              {"targets": ["10.0.0.5:1"]},
              {"targets": ["10.0.0.6:2"], "labels": {"model": "chat", "__meta_gpufleet_state": "retiring"}},
              {"targets": ["10.0.0.7:3"], "labels": {"model": "chat", "__meta_gpufleet_state": "ready"}}
            ]"#,
        )
        .unwrap();
        assert_eq!(
            model_base_urls(&groups, "chat"),
            [
                "http://127.0.0.1:20001",
                "http://10.0.0.2:20002",
                "https://10.0.0.4:443",
                "http://10.0.0.7:3"
            ]
        );
        assert!(model_base_urls(&groups, "absent").is_empty());
        assert_eq!(
            endpoints_url("http://c:7461/"),
            "http://c:7461/v1/endpoints"
        );
    }
}
