//! What one client may hold of the coordinator's listeners, so nobody can
//! starve the CLI or the agents: a connection must send its first request
//! within `header_read_timeout`, one with nothing in flight is closed after
//! `idle_timeout`, and the count of connections (in all and per IP address)
//! is capped. At a cap the oldest connection that has not sent a request yet
//! is closed for the newcomer: a flood of idle sockets from one address
//! (or behind one NAT) cannot lock out an agent that connects and speaks at
//! once. Every time a limit bites it is counted for `/metrics`, and logged
//! (at most every 10 s per listener).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::config::coordinator::ConnectionLimits;

/// How often a listener may log that a limit bites.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// File descriptors kept free of connections, for the store, logs and the
/// like.
const RESERVED_FDS: u64 = 128;

/// Why a connection was closed or refused by a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Closed {
    /// At a cap with no idle connection to close: the newcomer was refused.
    Refused,
    /// Closed at a cap to make room for a newcomer.
    Evicted,
    /// No request within `header_read_timeout`.
    HeaderTimeout,
    /// Nothing in flight for `idle_timeout`.
    Idle,
}

impl Closed {
    const ALL: [Closed; 4] = [
        Closed::Refused,
        Closed::Evicted,
        Closed::HeaderTimeout,
        Closed::Idle,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Closed::Refused => "refused",
            Closed::Evicted => "evicted",
            Closed::HeaderTimeout => "header_timeout",
            Closed::Idle => "idle",
        }
    }
}

/// One open connection's activity, shared by its stream and the requests
/// on it.
pub struct Conn {
    accepted: Instant,
    /// Set by the first request: the connection is in use, not a squatter.
    started: AtomicBool,
    in_flight: AtomicUsize,
    /// Milliseconds after `accepted` when the last request ended.
    last_done_ms: AtomicU64,
    close: Notify,
}

impl Conn {
    /// Marks a request in flight until the guard drops (with the response
    /// body, for streams).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.started.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// When this connection is to be closed for want of activity.
    fn deadline(&self, limits: &ConnectionLimits, now: Instant) -> (Instant, Closed) {
        if !self.started.load(Ordering::Relaxed) {
            return (
                self.accepted + limits.header_read_timeout,
                Closed::HeaderTimeout,
            );
        }
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return (now + limits.idle_timeout, Closed::Idle);
        }
        let last = self.accepted + Duration::from_millis(self.last_done_ms.load(Ordering::Relaxed));
        (last + limits.idle_timeout, Closed::Idle)
    }
}

/// A request in flight on a connection.
pub struct InFlight(Arc<Conn>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let ms = self.0.accepted.elapsed().as_millis() as u64;
        self.0.last_done_ms.store(ms, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Entry {
    peer: SocketAddr,
    conn: Arc<Conn>,
    /// Already told to close: no longer counted against the caps.
    evicted: bool,
}

#[derive(Default)]
struct Open {
    next: u64,
    /// By accept order: the first idle one found is the oldest.
    conns: BTreeMap<u64, Entry>,
    by_addr: HashMap<SocketAddr, u64>,
}

/// The limits of one listener and what they did.
pub struct Gate {
    listener: &'static str,
    limits: ConnectionLimits,
    open: Mutex<Open>,
    closed: [AtomicU64; 4],
    warned: Mutex<Option<Instant>>,
}

impl Gate {
    /// `listener` names it in logs and metrics ("grpc", "http").
    pub fn new(listener: &'static str, limits: ConnectionLimits) -> Arc<Gate> {
        Arc::new(Gate {
            listener,
            limits,
            open: Mutex::new(Open::default()),
            closed: Default::default(),
            warned: Mutex::new(None),
        })
    }

    pub fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    fn open(&self) -> std::sync::MutexGuard<'_, Open> {
        // The map stays consistent under a panic elsewhere: each change is
        // one insert or remove.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, why: Closed, detail: &dyn Fn() -> String) {
        self.closed[why as usize].fetch_add(1, Ordering::Relaxed);
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        if warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            *warned = Some(Instant::now());
            tracing::warn!(
                listener = self.listener,
                reason = why.as_str(),
                "connection limit: {} (counted in gpufleet_connections_closed_total)",
                detail()
            );
        }
    }

    /// Takes a new connection in, closing the oldest idle one when a cap is
    /// reached; None when it must be refused.
    pub fn admit(self: &Arc<Self>, stream: TcpStream, peer: SocketAddr) -> Option<Gated> {
        // Small requests and answers go out at once, not after Nagle's wait.
        let _ = stream.set_nodelay(true);
        let mut open = self.open();
        let live = |e: &&Entry| !e.evicted;
        let from_peer = open
            .conns
            .values()
            .filter(live)
            .filter(|e| e.peer.ip() == peer.ip())
            .count();
        let total = open.conns.values().filter(live).count();
        let over_peer = from_peer >= self.limits.max_connections_per_peer;
        let over_total = total >= self.limits.max_connections;
        if over_peer || over_total {
            let idle = open
                .conns
                .values_mut()
                .filter(|e| !e.evicted && !e.conn.started.load(Ordering::Relaxed))
                .find(|e| !over_peer || e.peer.ip() == peer.ip());
            let which = if over_peer {
                format!(
                    "{from_peer} connections from {} (limits.max_connections_per_peer)",
                    peer.ip()
                )
            } else {
                format!("{total} connections (limits.max_connections)")
            };
            match idle {
                Some(e) => {
                    e.evicted = true;
                    e.conn.close.notify_one();
                    let victim = e.peer;
                    drop(open);
                    self.count(Closed::Evicted, &|| {
                        format!("{which}: closing {victim}, which has sent no request, for {peer}")
                    });
                    open = self.open();
                }
                None => {
                    drop(open);
                    self.count(Closed::Refused, &|| {
                        format!("{which}, all of them in use: refusing {peer}")
                    });
                    return None;
                }
            }
        }
        let id = open.next;
        open.next += 1;
        let conn = Arc::new(Conn {
            accepted: Instant::now(),
            started: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            last_done_ms: AtomicU64::new(0),
            close: Notify::new(),
        });
        open.conns.insert(
            id,
            Entry {
                peer,
                conn: conn.clone(),
                evicted: false,
            },
        );
        open.by_addr.insert(peer, id);
        drop(open);
        let watchdog = Box::pin(watch(conn.clone(), self.limits));
        Some(Gated {
            io: stream,
            gate: self.clone(),
            id,
            peer,
            conn,
            watchdog,
            closed: None,
        })
    }

    /// The connection from `peer`, for marking its requests.
    pub fn conn_of(&self, peer: SocketAddr) -> Option<Arc<Conn>> {
        let open = self.open();
        let id = open.by_addr.get(&peer)?;
        open.conns.get(id).map(|e| e.conn.clone())
    }

    fn remove(&self, id: u64, peer: SocketAddr) {
        let mut open = self.open();
        open.conns.remove(&id);
        if open.by_addr.get(&peer) == Some(&id) {
            open.by_addr.remove(&peer);
        }
    }

    fn open_count(&self) -> usize {
        self.open().conns.len()
    }
}

/// Resolves when the connection is to be closed, and why.
async fn watch(conn: Arc<Conn>, limits: ConnectionLimits) -> Closed {
    loop {
        let now = Instant::now();
        let (deadline, why) = conn.deadline(&limits, now);
        if deadline <= now {
            return why;
        }
        tokio::select! {
            _ = conn.close.notified() => return Closed::Evicted,
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
    }
}

/// An admitted connection: the socket, closed (reads and writes fail) when
/// its watchdog says so, and taken off the gate when dropped.
pub struct Gated {
    io: TcpStream,
    gate: Arc<Gate>,
    id: u64,
    peer: SocketAddr,
    conn: Arc<Conn>,
    watchdog: Pin<Box<dyn Future<Output = Closed> + Send>>,
    closed: Option<Closed>,
}

impl Gated {
    pub fn conn(&self) -> Arc<Conn> {
        self.conn.clone()
    }

    /// Err once the watchdog has fired; registers for its wake-up otherwise.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.closed.is_none() {
            if let Poll::Ready(why) = self.watchdog.as_mut().poll(cx) {
                self.closed = Some(why);
                if why != Closed::Evicted {
                    let peer = self.peer;
                    self.gate.count(why, &|| match why {
                        Closed::HeaderTimeout => format!(
                            "{peer} sent no request in time (limits.header_read_timeout): closed"
                        ),
                        _ => format!("{peer} was idle (limits.idle_timeout): closed"),
                    });
                }
            }
        }
        match self.closed {
            None => Ok(()),
            Some(why) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("connection closed by the coordinator ({})", why.as_str()),
            )),
        }
    }
}

impl Drop for Gated {
    fn drop(&mut self) {
        self.gate.remove(self.id, self.peer);
    }
}

impl AsyncRead for Gated {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Err(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Gated {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Gated {
    // The plain TCP info, so the session's peer address and client
    // certificate are found where tonic puts them for a TcpStream.
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// Accepts connections through `gate`, forever. Accept errors (out of file
/// descriptors) are logged and retried after a pause, never the end.
pub fn incoming(
    listener: TcpListener,
    gate: Arc<Gate>,
) -> impl futures_util::Stream<Item = io::Result<Gated>> {
    futures_util::stream::unfold((listener, gate), |(listener, gate)| async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    if let Some(g) = gate.admit(stream, peer) {
                        return Some((Ok(g), (listener, gate)));
                    }
                }
                Err(e) => {
                    gate.count(Closed::Refused, &|| format!("cannot accept: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
}

/// A response body that keeps its request in flight until it ends.
pub struct Tracked<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B: http_body::Body + Unpin> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Marks each gRPC call on the connection it came on (found by the peer
/// address tonic records), so working connections are never taken for idle.
#[derive(Clone)]
pub struct TrackCalls<S> {
    inner: S,
    gate: Arc<Gate>,
}

pub fn track_calls<S>(
    gate: Arc<Gate>,
) -> impl tower_layer::Layer<S, Service = TrackCalls<S>> + Clone {
    tower_layer::layer_fn(move |inner| TrackCalls {
        inner,
        gate: gate.clone(),
    })
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for TrackCalls<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: http_body::Body + Unpin,
{
    type Response = http::Response<TrackedOr<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
        let ext = req.extensions();
        let peer = ext
            .get::<TcpConnectInfo>()
            .or_else(|| {
                ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                    .map(|t| t.get_ref())
            })
            .and_then(|i| i.remote_addr);
        let in_flight = peer.and_then(|p| self.gate.conn_of(p)).map(|c| c.begin());
        let call = self.inner.call(req);
        Box::pin(async move {
            let resp = call.await?;
            Ok(resp.map(|body| match in_flight {
                Some(f) => TrackedOr::Tracked(Tracked {
                    body,
                    _in_flight: f,
                }),
                None => TrackedOr::Plain(body),
            }))
        })
    }
}

/// A response body, tracked when its connection is known.
pub enum TrackedOr<B> {
    Tracked(Tracked<B>),
    Plain(B),
}

impl<B: http_body::Body + Unpin> http_body::Body for TrackedOr<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        match self.get_mut() {
            TrackedOr::Tracked(t) => Pin::new(t).poll_frame(cx),
            TrackedOr::Plain(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            TrackedOr::Tracked(t) => t.is_end_stream(),
            TrackedOr::Plain(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            TrackedOr::Tracked(t) => t.size_hint(),
            TrackedOr::Plain(b) => b.size_hint(),
        }
    }
}

/// Serves `router` on the HTTP listener through `gate` until `shutdown`.
pub async fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    gate: Arc<Gate>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower_service::Service as _;
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(gate.limits().header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(64)
        .keep_alive_interval(Some(super::KEEPALIVE_INTERVAL))
        .keep_alive_timeout(super::KEEPALIVE_TIMEOUT);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let accepted = incoming(listener, gate);
    tokio::pin!(accepted, shutdown);
    loop {
        let io = tokio::select! {
            _ = &mut shutdown => break,
            io = futures_util::StreamExt::next(&mut accepted) => match io {
                Some(Ok(io)) => io,
                _ => continue,
            },
        };
        let conn = io.conn();
        let router = router.clone();
        let service =
            hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let in_flight = conn.begin();
                let mut router = router.clone();
                async move {
                    let resp = router.call(req.map(axum::body::Body::new)).await?;
                    Ok::<_, std::convert::Infallible>(resp.map(|body| {
                        axum::body::Body::new(Tracked {
                            body,
                            _in_flight: in_flight,
                        })
                    }))
                }
            });
        let builder = builder.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let served = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            tokio::pin!(served);
            tokio::select! {
                _ = served.as_mut() => {}
                _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                    served.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), served).await;
                }
            }
        });
    }
    let _ = stop_tx.send(true);
}

/// Raises this process's open-file limit to its hard limit (systemd's
/// default soft limit is 1,024) and returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// The limits with `max_connections` cut to what `fd_limit` allows for two
/// listeners, and per-peer no larger than that.
pub fn fit_to_fds(mut limits: ConnectionLimits, fd_limit: u64) -> ConnectionLimits {
    let room = (fd_limit.saturating_sub(RESERVED_FDS) / 2).max(16) as usize;
    if limits.max_connections > room {
        tracing::warn!(
            configured = limits.max_connections,
            allowed = room,
            fd_limit,
            "limits.max_connections cut to what the open-file limit allows (raise LimitNOFILE)"
        );
        limits.max_connections = room;
    }
    limits.max_connections_per_peer = limits.max_connections_per_peer.min(limits.max_connections);
    limits
}

/// The connection metrics of `gates`, appended to a Prometheus page.
pub fn write_metrics(out: &mut String, gates: &[Arc<Gate>]) {
    use crate::exposition::{family, labels};
    family(
        out,
        "gpufleet_connections",
        "gauge",
        "Open connections by listener.",
        gates
            .iter()
            .map(|g| {
                (
                    labels(&[("listener", g.listener)]),
                    g.open_count().to_string(),
                )
            })
            .collect(),
    );
    family(
        out,
        "gpufleet_connections_closed_total",
        "counter",
        "Connections closed or refused by a limit, by listener and reason.",
        gates
            .iter()
            .flat_map(|g| {
                Closed::ALL.into_iter().map(move |why| {
                    (
                        labels(&[("listener", g.listener), ("reason", why.as_str())]),
                        g.closed[why as usize].load(Ordering::Relaxed).to_string(),
                    )
                })
            })
            .collect(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_send_small_writes_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = incoming(listener, Gate::new("grpc", ConnectionLimits::default()));
        tokio::pin!(accepted);
        let _client = TcpStream::connect(addr).await.unwrap();
        let gated = futures_util::StreamExt::next(&mut accepted)
            .await
            .unwrap()
            .unwrap();
        // Without it every small answer waits for the client's delayed ACK
        // (about 40 ms on Linux).
        assert!(
            gated.io.nodelay().unwrap(),
            "TCP_NODELAY on the accepted socket"
        );
    }
}
