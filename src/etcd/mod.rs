//! A thin client for etcd's v3 API (KV, Lease, Watch, Maintenance) over
//! tonic, from etcd's own protos vendored in proto/etcd: what the HA store
//! and leader election need, with failover across the configured endpoints.
//! Streams (lease keep-alive, watch) are reopened by their owners after any
//! error, on whichever endpoint answers.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

#[allow(clippy::all, missing_docs)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}
#[allow(clippy::all, missing_docs)]
pub mod authpb {
    tonic::include_proto!("authpb");
}
#[allow(clippy::all, missing_docs)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

pub mod server;

use etcdserverpb as pb;
pub use etcdserverpb::{compare, request_op, Compare, RequestOp, TxnRequest, TxnResponse};
pub use mvccpb::KeyValue;

/// One request to etcd may carry at most this (etcd's default
/// `--max-request-bytes` is 1.5 MiB); the store refuses bigger writes
/// itself, with the key named, before sending anything.
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// How long one call may take before the next endpoint is tried.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd is unreachable at {endpoints}: {reason}")]
    Unreachable { endpoints: String, reason: String },
    #[error("etcd's storage quota is full ({0}); compact and defragment etcd, or raise --quota-backend-bytes")]
    QuotaFull(String),
    #[error("etcd refused the request: {0}")]
    Refused(String),
    #[error("etcd settings: {0}")]
    Settings(String),
}

/// Where etcd is and how to talk to it (`[store]` of the coordinator).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EtcdSettings {
    /// `http://host:2379` or `https://host:2379`, one per member.
    pub endpoints: Vec<String>,
    /// CA bundle, and the client certificate and key etcd asks for.
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// A client over every endpoint; calls go to the one that last answered and
/// move on to the next when it does not.
#[derive(Clone)]
pub struct Etcd {
    endpoints: Vec<String>,
    channels: std::sync::Arc<Vec<Channel>>,
    current: std::sync::Arc<AtomicUsize>,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Etcd({})", self.endpoints.join(","))
    }
}

/// The end of the range of every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn classify(status: &tonic::Status) -> Retry {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
            if !status
                .message()
                .contains("etcdserver: request is too large") =>
        {
            Retry::NextEndpoint
        }
        tonic::Code::ResourceExhausted if status.message().contains("space exceeded") => {
            Retry::Quota
        }
        _ => Retry::No,
    }
}

enum Retry {
    NextEndpoint,
    Quota,
    No,
}

impl Etcd {
    /// A client for `settings`; connects lazily, so it must be made inside
    /// the tokio runtime that will use it.
    pub fn new(settings: &EtcdSettings) -> Result<Etcd, EtcdError> {
        if settings.endpoints.is_empty() {
            return Err(EtcdError::Settings(
                "no endpoints: set [store] endpoints = [\"http://127.0.0.1:2379\"]".into(),
            ));
        }
        let tls = tls_config(settings)?;
        let mut channels = Vec::new();
        for url in &settings.endpoints {
            let mut endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| EtcdError::Settings(format!("endpoint `{url}` is not a URL: {e}")))?
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(CALL_TIMEOUT)
                .http2_keep_alive_interval(Duration::from_secs(2))
                .keep_alive_timeout(Duration::from_secs(2))
                .keep_alive_while_idle(true);
            if let Some(tls) = &tls {
                if !url.starts_with("https://") {
                    return Err(EtcdError::Settings(format!(
                        "endpoint `{url}`: [store] tls is set, so endpoints must be https://"
                    )));
                }
                endpoint = endpoint
                    .tls_config(tls.clone())
                    .map_err(|e| EtcdError::Settings(format!("TLS for `{url}`: {e}")))?;
            }
            channels.push(endpoint.connect_lazy());
        }
        Ok(Etcd {
            endpoints: settings.endpoints.clone(),
            channels: std::sync::Arc::new(channels),
            current: Default::default(),
        })
    }

    pub fn endpoints(&self) -> String {
        self.endpoints.join(", ")
    }

    /// Runs `call` on the current endpoint, then on each other one while
    /// the failure is the endpoint's (unreachable, timed out).
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, EtcdError>
    where
        F: Fn(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let n = self.channels.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last = String::new();
        for i in 0..n {
            let at = (start + i) % n;
            match tokio::time::timeout(CALL_TIMEOUT, call(self.channels[at].clone())).await {
                Ok(Ok(v)) => {
                    self.current.store(at, Ordering::Relaxed);
                    return Ok(v);
                }
                Ok(Err(status)) => match classify(&status) {
                    Retry::NextEndpoint => {
                        last = format!("{}: {}", self.endpoints[at], status_text(&status))
                    }
                    Retry::Quota => return Err(EtcdError::QuotaFull(status.message().into())),
                    Retry::No => return Err(EtcdError::Refused(status_text(&status))),
                },
                Err(_) => {
                    last = format!("{}: no answer within {CALL_TIMEOUT:?}", self.endpoints[at])
                }
            }
        }
        Err(EtcdError::Unreachable {
            endpoints: self.endpoints(),
            reason: last,
        })
    }

    fn kv(ch: Channel) -> pb::kv_client::KvClient<Channel> {
        pb::kv_client::KvClient::new(ch).max_decoding_message_size(64 * 1024 * 1024)
    }

    /// Every key starting with `prefix`, in key order.
    pub async fn range_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, EtcdError> {
        let req = pb::RangeRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            ..Default::default()
        };
        self.call(|ch| {
            let req = req.clone();
            async move { Ok(Self::kv(ch).range(req).await?.into_inner().kvs) }
        })
        .await
    }

    /// One key, if it exists.
    pub async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, EtcdError> {
        let req = pb::RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        };
        self.call(|ch| {
            let req = req.clone();
            async move { Ok(Self::kv(ch).range(req).await?.into_inner().kvs.pop()) }
        })
        .await
    }

    pub async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, EtcdError> {
        self.call(|ch| {
            let req = req.clone();
            async move { Ok(Self::kv(ch).txn(req).await?.into_inner()) }
        })
        .await
    }

    pub async fn put(&self, key: &[u8], value: &[u8], lease: i64) -> Result<(), EtcdError> {
        let req = pb::PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        };
        self.call(|ch| {
            let req = req.clone();
            async move { Self::kv(ch).put(req).await.map(|_| ()) }
        })
        .await
    }

    /// A lease of `ttl` seconds; its id.
    pub async fn lease_grant(&self, ttl: i64) -> Result<i64, EtcdError> {
        let req = pb::LeaseGrantRequest { ttl, id: 0 };
        let resp = self
            .call(|ch| async move {
                Ok(pb::lease_client::LeaseClient::new(ch)
                    .lease_grant(req)
                    .await?
                    .into_inner())
            })
            .await?;
        if !resp.error.is_empty() {
            return Err(EtcdError::Refused(resp.error));
        }
        Ok(resp.id)
    }

    /// Ends the lease now: every key attached to it goes with it.
    pub async fn lease_revoke(&self, id: i64) -> Result<(), EtcdError> {
        let req = pb::LeaseRevokeRequest { id };
        self.call(|ch| async move {
            pb::lease_client::LeaseClient::new(ch)
                .lease_revoke(req)
                .await
                .map(|_| ())
        })
        .await
    }

    /// The status of each endpoint: its version, or why it did not answer.
    pub async fn status(&self) -> Vec<(String, Result<String, String>)> {
        let mut out = Vec::new();
        for (url, ch) in self.endpoints.iter().zip(self.channels.iter()) {
            let mut client = pb::maintenance_client::MaintenanceClient::new(ch.clone());
            let r = match tokio::time::timeout(CALL_TIMEOUT, client.status(pb::StatusRequest {}))
                .await
            {
                Ok(Ok(s)) => Ok(s.into_inner().version),
                Ok(Err(s)) => Err(status_text(&s)),
                Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
            };
            out.push((url.clone(), r));
        }
        out
    }

    /// A keep-alive stream for lease `id`, opened on first use and again
    /// after any failure.
    pub fn keep_alive(&self, id: i64) -> KeepAlive {
        KeepAlive {
            etcd: self.clone(),
            id,
            stream: None,
        }
    }

    /// Waits until `key` is deleted (or replaced) after `revision`, or the
    /// watch stream fails (the caller checks the key again either way).
    pub async fn wait_for_change(&self, key: &[u8], revision: i64) -> Result<(), EtcdError> {
        let at = self.current.load(Ordering::Relaxed) % self.channels.len();
        let mut client = pb::watch_client::WatchClient::new(self.channels[at].clone());
        let (tx, rx) = mpsc::channel(1);
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: key.to_vec(),
                    start_revision: revision + 1,
                    ..Default::default()
                },
            )),
        };
        let _ = tx.send(create).await;
        let mut stream = client
            .watch(ReceiverStream::new(rx))
            .await
            .map_err(|s| self.unreachable(at, &s))?
            .into_inner();
        loop {
            match stream.message().await {
                Ok(Some(resp)) if !resp.events.is_empty() || resp.canceled => return Ok(()),
                Ok(Some(_)) => continue,
                Ok(None) => return Ok(()),
                Err(s) => {
                    self.current.store(at + 1, Ordering::Relaxed);
                    return Err(self.unreachable(at, &s));
                }
            }
        }
    }

    fn unreachable(&self, at: usize, s: &tonic::Status) -> EtcdError {
        EtcdError::Unreachable {
            endpoints: self.endpoints(),
            reason: format!("{}: {}", self.endpoints[at], status_text(s)),
        }
    }
}

/// A lease's keep-alive stream, reopened after any failure.
pub struct KeepAlive {
    etcd: Etcd,
    id: i64,
    stream: Option<KeepAliveStream>,
}

/// One open keep-alive stream and the endpoint it is on.
struct KeepAliveStream {
    tx: mpsc::Sender<pb::LeaseKeepAliveRequest>,
    rx: tonic::Streaming<pb::LeaseKeepAliveResponse>,
    at: usize,
}

/// After a keep-alive stream fails, the next endpoint is asked at once and
/// each further one this much later, all racing: the first to acknowledge
/// keeps the stream.
const HEDGE_AFTER: Duration = Duration::from_millis(250);

impl KeepAlive {
    /// Renews the lease once: its remaining TTL in seconds (0 or less: the
    /// lease is gone).
    ///
    /// On the open stream when there is one. Otherwise (first use, or that
    /// stream failed) a new stream is opened on every endpoint, staggered,
    /// and the first that acknowledges is kept: a member that lost its raft
    /// leader holds a renewal until a new leader is elected, and the one
    /// that gets there first must not wait behind a call timeout on another.
    pub async fn renew(&mut self) -> Result<i64, EtcdError> {
        let n = self.etcd.channels.len();
        let mut first = self.etcd.current.load(Ordering::Relaxed) % n;
        // Taken out while in use: a renewal cancelled halfway (its caller
        // timed out) leaves no answer behind for the next one to misread.
        if let Some(mut open) = self.stream.take() {
            let at = open.at;
            match tokio::time::timeout(CALL_TIMEOUT, open.renew(self.id)).await {
                Ok(Ok(ttl)) => {
                    self.stream = Some(open);
                    return Ok(ttl);
                }
                Ok(Err(e)) => tracing::debug!("keep-alive on {}: {e}", self.etcd.endpoints[at]),
                Err(_) => tracing::debug!(
                    "keep-alive on {}: no answer within {CALL_TIMEOUT:?}",
                    self.etcd.endpoints[at]
                ),
            }
            first = (at + 1) % n;
            let _ =
                self.etcd
                    .current
                    .compare_exchange(at, first, Ordering::Relaxed, Ordering::Relaxed);
        }
        let mut racing = tokio::task::JoinSet::new();
        for i in 0..n {
            let at = (first + i) % n;
            let (channel, id) = (self.etcd.channels[at].clone(), self.id);
            racing.spawn(async move {
                tokio::time::sleep(HEDGE_AFTER * i as u32).await;
                let r = tokio::time::timeout(CALL_TIMEOUT, KeepAliveStream::open(channel, at, id))
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {CALL_TIMEOUT:?}")));
                (at, r)
            });
        }
        let mut failed = Vec::new();
        while let Some(joined) = racing.join_next().await {
            let Ok((at, r)) = joined else { continue };
            match r {
                Ok((open, ttl)) => {
                    self.etcd.current.store(at, Ordering::Relaxed);
                    self.stream = Some(open);
                    return Ok(ttl);
                }
                Err(e) => failed.push(format!("{}: {e}", self.etcd.endpoints[at])),
            }
        }
        Err(EtcdError::Unreachable {
            endpoints: self.etcd.endpoints(),
            reason: format!("keep-alive: {}", failed.join("; ")),
        })
    }
}

impl KeepAliveStream {
    /// Opens a keep-alive stream on `channel` and renews lease `id` on it
    /// once.
    async fn open(channel: Channel, at: usize, id: i64) -> Result<(Self, i64), String> {
        // The first request goes in before the call: etcd answers the
        // stream's headers only once it has one.
        let (tx, rx) = mpsc::channel(4);
        tx.send(pb::LeaseKeepAliveRequest { id })
            .await
            .map_err(|_| "keep-alive stream closed".to_string())?;
        let rx = pb::lease_client::LeaseClient::new(channel)
            .lease_keep_alive(ReceiverStream::new(rx))
            .await
            .map_err(|s| status_text(&s))?
            .into_inner();
        let mut open = KeepAliveStream { tx, rx, at };
        let ttl = open.answer().await?;
        Ok((open, ttl))
    }

    async fn renew(&mut self, id: i64) -> Result<i64, String> {
        self.tx
            .send(pb::LeaseKeepAliveRequest { id })
            .await
            .map_err(|_| "keep-alive stream closed".to_string())?;
        self.answer().await
    }

    async fn answer(&mut self) -> Result<i64, String> {
        match self.rx.message().await {
            Ok(Some(resp)) => Ok(resp.ttl),
            Ok(None) => Err("keep-alive stream ended".into()),
            Err(s) => Err(status_text(&s)),
        }
    }
}

fn status_text(s: &tonic::Status) -> String {
    match std::error::Error::source(s) {
        Some(cause) if s.message().is_empty() || s.message() == "transport error" => {
            crate::wire::error_chain(cause)
        }
        _ => s.message().to_string(),
    }
}

fn tls_config(s: &EtcdSettings) -> Result<Option<ClientTlsConfig>, EtcdError> {
    let read = |what: &str, p: &PathBuf| {
        std::fs::read(p)
            .map_err(|e| EtcdError::Settings(format!("cannot read {what} {}: {e}", p.display())))
    };
    let Some(ca) = &s.ca else {
        if s.cert.is_some() || s.key.is_some() {
            return Err(EtcdError::Settings(
                "[store] tls cert and key need ca as well".into(),
            ));
        }
        return Ok(None);
    };
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("the etcd CA", ca)?));
    match (&s.cert, &s.key) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(Identity::from_pem(
                read("the etcd client certificate", cert)?,
                read("the etcd client key", key)?,
            ))
        }
        (None, None) => {}
        _ => {
            return Err(EtcdError::Settings(
                "[store] tls cert and key go together".into(),
            ))
        }
    }
    Ok(Some(tls))
}

/// A compare that holds while `key` has the create revision `rev`.
pub fn created_at(key: &[u8], rev: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(compare::TargetUnion::CreateRevision(rev)),
        ..Default::default()
    }
}

/// A compare that holds while `key` does not exist.
pub fn absent(key: &[u8]) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Version as i32,
        key: key.to_vec(),
        target_union: Some(compare::TargetUnion::Version(0)),
        ..Default::default()
    }
}

pub fn put_op(key: Vec<u8>, value: Vec<u8>, lease: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(pb::PutRequest {
            key,
            value,
            lease,
            ..Default::default()
        })),
    }
}

pub fn delete_op(key: Vec<u8>, range_end: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            pb::DeleteRangeRequest {
                key,
                range_end,
                ..Default::default()
            },
        )),
    }
}

pub fn get_op(key: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(pb::RangeRequest {
            key,
            ..Default::default()
        })),
    }
}

/// The key-values a txn's `n`th op (a get) returned.
pub fn got(resp: &TxnResponse, n: usize) -> Vec<KeyValue> {
    match resp.responses.get(n).and_then(|r| r.response.as_ref()) {
        Some(pb::response_op::Response::ResponseRange(r)) => r.kvs.clone(),
        _ => Vec::new(),
    }
}

/// The revision a txn committed at (a key it created has this create
/// revision).
pub fn revision(resp: &TxnResponse) -> i64 {
    resp.header.as_ref().map_or(0, |h| h.revision)
}

#[cfg(test)]
mod tests {
    use super::server::LocalEtcd;
    use super::*;

    /// The index of the endpoint that is etcd's raft leader, once one is.
    async fn raft_leader(etcd: &Etcd) -> usize {
        for _ in 0..100 {
            for (i, ch) in etcd.channels.iter().enumerate() {
                let mut client = pb::maintenance_client::MaintenanceClient::new(ch.clone());
                if let Ok(s) = client.status(pb::StatusRequest {}).await {
                    let s = s.into_inner();
                    if s.header.is_some_and(|h| h.member_id == s.leader) {
                        return i;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the etcd cluster elected no raft leader");
    }

    #[tokio::test]
    async fn a_keep_alive_outlives_the_raft_leader_it_renewed_on() {
        let Some(mut members) = LocalEtcd::cluster_or_skip(3) else {
            return;
        };
        let etcd = Etcd::new(&EtcdSettings {
            endpoints: members.iter().map(|m| m.client_url.clone()).collect(),
            ..Default::default()
        })
        .unwrap();
        let lease = etcd.lease_grant(60).await.unwrap();
        let leader = raft_leader(&etcd).await;
        etcd.current.store(leader, Ordering::Relaxed);
        let mut keepalive = etcd.keep_alive(lease);
        assert!(keepalive.renew().await.unwrap() > 0);
        assert_eq!(keepalive.stream.as_ref().map(|s| s.at), Some(leader));

        // Its member gone (and with it etcd's raft leader), a renewal gets
        // through on another once the two left elect a new raft leader.
        members[leader].stop();
        let mut failures = Vec::new();
        let ttl = loop {
            match keepalive.renew().await {
                Ok(ttl) => break ttl,
                Err(e) => failures.push(e.to_string()),
            }
            assert!(failures.len() < 100, "{failures:#?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(ttl > 0, "the lease outlived the raft election: {ttl}");
        let now_at = keepalive.stream.as_ref().map(|s| s.at);
        assert!(now_at.is_some_and(|at| at != leader), "{now_at:?}");
        // The stream kept is the one used next: no reopening.
        assert!(keepalive.renew().await.unwrap() > 0);
        assert_eq!(keepalive.stream.as_ref().map(|s| s.at), now_at);
    }
}
