//! The OpenAI-compatible request path: read the body (capped, timed), take
//! the model from it, hold the request until a replica has room, send it,
//! and pass the replica's answer back byte for byte. A request whose
//! replica fails before answering is tried on another; never after a byte
//! reached the client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::dispatch::{Admission, Refusal, Slot};
use super::prefix::{prefix_hashes, prompt_text, Routing};
use super::Gateway;

/// Label for requests whose model is not one the fleet serves, so that
/// client-chosen names cannot grow the metrics without bound.
const UNKNOWN_MODEL: &str = "_unknown";

/// Why a request was refused, as clients (and the metrics) read it.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub reason: &'static str,
    pub model: String,
    pub message: String,
    /// Seconds for `Retry-After`.
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, reason: &'static str, model: &str, message: String) -> ApiError {
        ApiError {
            status,
            reason,
            model: model.to_string(),
            message,
            retry_after: None,
        }
    }

    /// A refusal that concerns no model (an unknown path, a wrong method).
    pub(super) fn refusal(status: StatusCode, reason: &'static str, message: String) -> ApiError {
        ApiError::new(status, reason, "", message)
    }

    fn retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs.max(1));
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // OpenAI's error shape, plus the model and a machine-readable reason.
        let body = serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.reason,
                "code": self.status.as_u16(),
                "model": self.model,
                "reason": self.reason,
            }
        });
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

/// The model a request names (the `model` string of its JSON object body),
/// and the body parsed.
pub fn model_of(body: &[u8]) -> Result<(String, serde_json::Value), ApiError> {
    let mut value: serde_json::Value = serde_json::from_slice(body).map_err(not_json)?;
    let model = match value.as_object_mut() {
        Some(obj) => match obj.get_mut("model") {
            Some(serde_json::Value::String(m)) => Peeked::Model(std::mem::take(m)),
            Some(_) => Peeked::NotString,
            None => Peeked::Absent,
        },
        None => Peeked::NotObject,
    };
    Ok((named_model(model)?, value))
}

/// The model a request names, as [`model_of`] finds it, without building
/// the body's tree: the rest of the body (a prompt of any size) is only
/// checked to be JSON. Where nothing else of the body is needed.
pub fn peek_model(body: &[u8]) -> Result<String, ApiError> {
    named_model(serde_json::from_slice::<Peeked>(body).map_err(not_json)?)
}

fn not_json(e: serde_json::Error) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_json",
        "",
        format!("the request body is not valid JSON: {e}"),
    )
}

/// What a body's `model` field is.
enum Peeked {
    NotObject,
    Absent,
    NotString,
    Model(String),
}

impl<'de> serde::Deserialize<'de> for Peeked {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Peeked, D::Error> {
        d.deserialize_any(PeekVisitor)
    }
}

struct PeekVisitor;

impl<'de> serde::de::Visitor<'de> for PeekVisitor {
    type Value = Peeked;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Peeked, A::Error> {
        let mut model = Peeked::Absent;
        while let Some(key) = map.next_key::<IsModel>()? {
            if key.0 {
                // The last of repeated keys counts, as in a parsed object.
                model = match map.next_value::<serde_json::Value>()? {
                    serde_json::Value::String(m) => Peeked::Model(m),
                    _ => Peeked::NotString,
                };
            } else {
                map.next_value::<Checked>()?;
            }
        }
        Ok(model)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Peeked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Peeked::NotObject)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Peeked, E> {
        Ok(Peeked::NotObject)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Peeked, E> {
        Ok(Peeked::NotObject)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Peeked, E> {
        Ok(Peeked::NotObject)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Peeked, E> {
        Ok(Peeked::NotObject)
    }

    fn visit_str<E>(self, _: &str) -> Result<Peeked, E> {
        Ok(Peeked::NotObject)
    }

    fn visit_unit<E>(self) -> Result<Peeked, E> {
        Ok(Peeked::NotObject)
    }
}

/// Any JSON value, read as strictly as parsing it into a tree would (every
/// string unescaped and checked, every number read) but kept nowhere:
/// serde's `IgnoredAny` skips strings without checking their escapes, and
/// would pass on a body that parsing refuses.
struct Checked;

impl<'de> serde::Deserialize<'de> for Checked {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Checked, D::Error> {
        d.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> serde::de::Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_entry::<Checked, Checked>()?.is_some() {}
        Ok(Checked)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
}

/// Whether an object's key is `model` (read without copying it).
struct IsModel(bool);

impl<'de> serde::Deserialize<'de> for IsModel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<IsModel, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = IsModel;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E>(self, key: &str) -> Result<IsModel, E> {
                Ok(IsModel(key == "model"))
            }
        }
        d.deserialize_str(V)
    }
}

fn named_model(peeked: Peeked) -> Result<String, ApiError> {
    match peeked {
        Peeked::NotObject => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "",
            "the request body must be a JSON object with a `model` field".into(),
        )),
        Peeked::Model(m) if !m.trim().is_empty() => Ok(m),
        Peeked::Model(_) | Peeked::NotString => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing_model",
            "",
            "the `model` field must be a non-empty string naming a model of the fleet (GET /v1/models lists them)".into(),
        )),
        Peeked::Absent => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing_model",
            "",
            "the request names no model: add a `model` field (GET /v1/models lists them)".into(),
        )),
    }
}

/// Reads the whole body, refusing more than `limit` bytes or a client
/// slower than `timeout` (a slowloris holds only its own connection).
pub async fn read_body(body: Body, limit: u64, timeout: Duration) -> Result<Bytes, ApiError> {
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit_usize)).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "",
            format!(
                "the request body did not arrive within {}",
                humantime::format_duration(timeout)
            ),
        )),
        Ok(Err(e)) => {
            let e = e.into_inner();
            let too_large = e.is::<http_body_util::LengthLimitError>();
            if too_large {
                Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "",
                    format!(
                        "the request body is over the gateway's limit of {} (max_body)",
                        crate::config::units::format_bytes(limit)
                    ),
                ))
            } else {
                Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "body_unreadable",
                    "",
                    format!("the request body could not be read: {e}"),
                ))
            }
        }
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

/// Headers that belong to one connection (or, `authorization`, to the
/// client and the gateway), never forwarded. Names, not text: removing one
/// by name skips parsing it, twice per request.
static HOP_BY_HOP: [header::HeaderName; 10] = [
    header::CONNECTION,
    header::HeaderName::from_static("keep-alive"),
    header::HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::HOST,
    header::CONTENT_LENGTH,
    header::AUTHORIZATION,
];

/// Removes the headers that belong to one connection.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Serves one OpenAI request for `path` ("/v1/completions").
pub async fn forward(
    gw: Arc<Gateway>,
    path: &'static str,
    req: axum::extract::Request,
) -> Response {
    let arrived = Instant::now();
    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    if let Err(e) = gw.authorize(&headers) {
        gw.metrics.rejection(UNKNOWN_MODEL, e.reason);
        gw.metrics.response(UNKNOWN_MODEL, e.status.as_u16());
        return e.into_response();
    }
    // What goes on to the replica.
    strip_hop_by_hop(&mut headers);
    let result = async {
        let bytes = read_body(body, gw.cfg.max_body_bytes, gw.cfg.request_read_timeout).await?;
        // Only prefix routing reads more of the body than its model.
        let (model, prefix) = match gw.cfg.routing {
            Routing::Prefix { .. } => {
                let (model, parsed) = model_of(&bytes)?;
                (model, prefix_hashes(&prompt_text(&parsed)))
            }
            Routing::LeastOutstanding | Routing::RoundRobin => (peek_model(&bytes)?, Vec::new()),
        };
        send(&gw, path, &headers, bytes, &model, prefix, arrived).await
    }
    .await;
    match result {
        Ok((model, resp)) => {
            gw.metrics.response(&model, resp.status().as_u16());
            resp
        }
        Err(e) => {
            let label = if e.model.is_empty() || e.reason == "unknown_model" {
                UNKNOWN_MODEL.to_string()
            } else {
                e.model.clone()
            };
            gw.metrics.rejection(&label, e.reason);
            gw.metrics.response(&label, e.status.as_u16());
            e.into_response()
        }
    }
}

/// Holds the request until a replica has room, then sends it; tries
/// another replica while the chosen one fails before answering.
async fn send(
    gw: &Arc<Gateway>,
    path: &'static str,
    headers: &HeaderMap,
    body: Bytes,
    model: &str,
    prefix: Vec<u64>,
    arrived: Instant,
) -> Result<(String, Response), ApiError> {
    let deadline = arrived + gw.cfg.hold_timeout;
    let mut attempt = 1;
    loop {
        let slot = hold(gw, model, prefix.clone(), arrived, deadline).await?;
        let held = (attempt == 1).then(|| arrived.elapsed());
        gw.metrics.placed(model, slot.grant().how, held);
        let mut resent = false;
        let sent = loop {
            match upstream(gw, &slot.grant().address, path, headers, &body).await {
                Err(e) if !resent && closed_unanswered(&*e) => {
                    // The replica closed a kept-alive connection as the
                    // request went out on it (llama.cpp closes one after
                    // every streamed response without saying so): not the
                    // replica failing. Once more at once, on a new connection.
                    tracing::debug!(model, replica_id = %slot.grant().replica, "a kept-alive connection closed unanswered; sending again: {}", crate::wire::error_chain(&*e));
                    gw.metrics.retry(model);
                    resent = true;
                }
                other => break other,
            }
        };
        match sent {
            Ok(resp) => return Ok((model.to_string(), relay(gw, resp, slot, arrived))),
            Err(e) => {
                let replica = slot.grant().replica.clone();
                tracing::warn!(model, replica_id = %replica, attempt, "replica failed before answering: {}", crate::wire::error_chain(&*e));
                gw.dispatcher.mark_failed(model, &replica);
                drop(slot);
                if attempt >= gw.cfg.max_attempts {
                    return Err(ApiError::new(
                        StatusCode::BAD_GATEWAY,
                        "replica_failed",
                        model,
                        format!(
                            "model `{model}`: {attempt} replicas failed before answering; the last ({replica}): {}",
                            crate::wire::error_chain(&*e)
                        ),
                    ));
                }
                gw.metrics.retry(model);
                attempt += 1;
            }
        }
    }
}

/// Why a request did not reach a replica or got no answer from it.
type SendError = Box<dyn std::error::Error + Send + Sync>;

/// Sends the request to the replica at `address` over a pooled connection;
/// the answer's body is still to come.
async fn upstream(
    gw: &Gateway,
    address: &str,
    path: &'static str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<axum::http::Response<hyper::body::Incoming>, SendError> {
    let mut uri = axum::http::uri::Parts::default();
    uri.scheme = Some(axum::http::uri::Scheme::HTTP);
    uri.authority = Some(address.parse()?);
    uri.path_and_query = Some(axum::http::uri::PathAndQuery::from_static(path));
    let uri = axum::http::Uri::from_parts(uri)?;
    let mut req = axum::http::Request::new(http_body_util::Full::new(body.clone()));
    *req.method_mut() = axum::http::Method::POST;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers.clone();
    Ok(gw.upstream.request(req).await?)
}

/// Whether the replica closed the connection with no answer at all (no
/// status line): what a kept-alive connection the replica was closing looks
/// like, as opposed to a refused connection or a timeout.
fn closed_unanswered(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() {
                return true;
            }
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ) {
                return true;
            }
        }
        source = err.source();
    }
    false
}

/// The answer while no routing table has come from the coordinator: the
/// gateway cannot tell yet which models the fleet has.
pub(super) fn no_routes(gw: &Gateway, model: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_routes",
        model,
        format!(
            "the gateway has not yet received the fleet's replicas from the coordinator at {}",
            gw.cfg.coordinator
        ),
    )
    .retry_after(1)
}

/// 404 for a model the fleet does not serve, naming those it does.
pub(super) fn unknown_model(model: &str, known: &[String]) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_model",
        model,
        if known.is_empty() {
            format!("model `{model}` is not served here; the fleet has no models")
        } else {
            format!(
                "model `{model}` is not served here; models: {}",
                known.join(", ")
            )
        },
    )
}

/// A slot on a replica of `model`, waiting (until `deadline`) while none
/// has room.
async fn hold(
    gw: &Arc<Gateway>,
    model: &str,
    prefix: Vec<u64>,
    arrived: Instant,
    deadline: Instant,
) -> Result<Slot, ApiError> {
    let (id, rx, first) = match gw.dispatcher.admit(model, prefix) {
        Admission::Go(grant) => return Ok(gw.dispatcher.slot(model, grant)),
        Admission::Wait { id, rx, first } => (id, rx, first),
        Admission::Refused(Refusal::NoTable) => return Err(no_routes(gw, model)),
        Admission::Refused(Refusal::UnknownModel { known }) => {
            return Err(unknown_model(model, &known))
        }
        Admission::Refused(Refusal::QueueFull { queued, capacity }) => {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "queue_full",
                model,
                format!("model `{model}` has {queued} requests waiting already (queue_capacity {capacity}); retry later"),
            )
            .retry_after(1))
        }
    };
    if first {
        // The first request for a sleeping model wakes it now, not at the
        // next report.
        gw.wake.notify_one();
    }
    let mut ticket = gw.dispatcher.ticket(model, id, rx);
    let granted = async {
        loop {
            // A replica passed over after a failure frees no slot when its
            // cooldown ends: the queue is served then by its waiters.
            let cooled = gw.dispatcher.cooldown_end(model);
            tokio::select! {
                slot = ticket.granted() => return slot,
                _ = tokio::time::sleep_until(cooled.unwrap_or(deadline).into()), if cooled.is_some() => {
                    gw.dispatcher.serve_queue(model);
                }
            }
        }
    };
    match tokio::time::timeout_at(deadline.into(), granted).await {
        Ok(Some(slot)) => Ok(slot),
        Ok(None) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_model",
            model,
            format!("model `{model}` was deleted while the request waited"),
        )),
        Err(_) => {
            let why = match gw.dispatcher.pinned(model) {
                Some(0) => format!(
                    "model `{model}` is pinned to 0 replicas (`gpufleet model scale {model} --auto` lets it wake)"
                ),
                _ => format!(
                    "model `{model}` had no replica with room within {} (hold_timeout)",
                    humantime::format_duration(deadline.saturating_duration_since(arrived))
                ),
            };
            Err(
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "hold_timeout", model, why)
                    .retry_after(5),
            )
        }
    }
}

/// The replica's answer, streamed back as it comes; the slot is held until
/// the last byte (or the client hangs up, which drops the body).
fn relay(
    gw: &Arc<Gateway>,
    resp: axum::http::Response<hyper::body::Incoming>,
    slot: Slot,
    arrived: Instant,
) -> Response {
    let (mut parts, body) = resp.into_parts();
    // A body of known length goes out as one, not chunked: fewer writes,
    // and the client can tell a cut body from a whole one the same way.
    let length = parts.headers.remove(header::CONTENT_LENGTH);
    strip_hop_by_hop(&mut parts.headers);
    if let Some(len) = length {
        parts.headers.insert(header::CONTENT_LENGTH, len);
    }
    let body = Relayed {
        inner: body,
        slot: Some(slot),
        first: Some((gw.clone(), arrived)),
    };
    Response::from_parts(parts, Body::new(body))
}

/// A replica's response body on its way to the client, frame by frame as
/// the replica sends it: holds the request's slot until the body ends (or
/// is dropped: the client went away) and times the first byte.
struct Relayed {
    inner: hyper::body::Incoming,
    slot: Option<Slot>,
    /// Taken at the first frame.
    first: Option<(Arc<Gateway>, Instant)>,
}

impl axum::body::HttpBody for Relayed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        if let std::task::Poll::Ready(frame) = &polled {
            if frame.is_some() {
                if let (Some((gw, arrived)), Some(slot)) = (this.first.take(), &this.slot) {
                    gw.metrics.first_byte(slot.model(), arrived.elapsed());
                }
            }
            if !matches!(frame, Some(Ok(_))) {
                // The end, or the replica failed mid-body: the slot is free.
                this.slot = None;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_comes_from_the_body() {
        assert_eq!(
            model_of(br#"{"model":"chat","prompt":"hi"}"#).unwrap().0,
            "chat"
        );
        let e = model_of(b"{not json").unwrap_err();
        assert_eq!(
            (e.status, e.reason),
            (StatusCode::BAD_REQUEST, "invalid_json")
        );
        let e = model_of(br#"["model"]"#).unwrap_err();
        assert_eq!(e.reason, "invalid_json");
        let e = model_of(br#"{"prompt":"hi"}"#).unwrap_err();
        assert_eq!(e.reason, "missing_model");
        assert!(e.message.contains("/v1/models"), "{}", e.message);
        let e = model_of(br#"{"model":7}"#).unwrap_err();
        assert_eq!(e.reason, "missing_model");
    }

    #[test]
    fn peeking_at_the_model_finds_what_parsing_the_body_finds() {
        let bodies: &[&[u8]] = &[
            br#"{"model":"chat","prompt":"hi","max_tokens":4,"stop":["\n",null],"n":1.5e3}"#,
            br#"{"prompt":{"nested":[1,{"model":"inner"}]},"model":"outer"}"#,
            br#"{"mod\u0065l":"escaped-key"}"#,
            br#"{"model":"caf\u00e9 \"quoted\""}"#,
            br#"{"model":"first","model":"last"}"#,
            br#"{"model":"m"} trailing"#,
            br#"{"model":"m""#,
            b"{not json",
            b"",
            br#"["model"]"#,
            br#""model""#,
            b"null",
            b"42",
            br#"{"prompt":"hi"}"#,
            br#"{"model":7}"#,
            br#"{"model":null}"#,
            br#"{"model":{"name":"chat"}}"#,
            br#"{"model":"  "}"#,
            br#"{}"#,
        ];
        for body in bodies {
            let parsed = model_of(body).map(|(m, _)| m);
            assert_eq!(
                peek_model(body),
                parsed,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(
            peek_model(br#"{"model":"first","model":"last"}"#).unwrap(),
            "last"
        );
        assert_eq!(
            peek_model(br#"{"mod\u0065l":"escaped-key"}"#).unwrap(),
            "escaped-key"
        );
    }

    #[test]
    fn peeking_reads_only_the_top_level_model_of_odd_json() {
        let deep = |n: usize| format!(r#"{{"model":"m","x":{}{}}}"#, "[".repeat(n), "]".repeat(n));
        let bodies: Vec<Vec<u8>> = vec![
            // Escaped keys: the key is compared once unescaped.
            br#"{"\u006d\u006f\u0064\u0065\u006c":"all-escaped"}"#.to_vec(),
            br#"{"mo\"del":"not-model","model":"real"}"#.to_vec(),
            br#"{"Model":"case","model ":"space"}"#.to_vec(),
            br#"{"model\u0000":"nul"}"#.to_vec(),
            // `model` inside nested objects and arrays, before and after.
            br#"{"messages":[{"role":"user","model":"inner"}],"model":"outer","extra":{"model":"later"}}"#
                .to_vec(),
            br#"{"a":{"b":{"c":{"model":"deep"}}}}"#.to_vec(),
            // Whitespace everywhere, a surrogate pair, a byte-order mark.
            b" \n\t{ \"model\" :\r\n \"sp\\ud83d\\ude00ace\" } \n".to_vec(),
            b"\xef\xbb\xbf{\"model\":\"bom\"}".to_vec(),
            br#"{"model":"bad-escape\x"}"#.to_vec(),
            br#"{"model":"lone-\ud83d"}"#.to_vec(),
            br#"{"model":"m","prompt":"lone-\ud83d"}"#.to_vec(),
            br#"{"model":"m","temperature":1e400}"#.to_vec(),
            b"{\"model\":\"not-utf8-\xff\"}".to_vec(),
            // Nesting past the parser's depth limit is not JSON it accepts.
            deep(100).into_bytes(),
            deep(10_000).into_bytes(),
        ];
        for body in &bodies {
            assert_eq!(
                peek_model(body),
                model_of(body).map(|(m, _)| m),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let peek = |b: &[u8]| peek_model(b).map_err(|e| e.reason);
        assert_eq!(peek(&bodies[0]), Ok("all-escaped".into()));
        assert_eq!(peek(&bodies[1]), Ok("real".into()));
        assert_eq!(peek(&bodies[2]), Err("missing_model"));
        assert_eq!(peek(&bodies[4]), Ok("outer".into()));
        assert_eq!(peek(&bodies[5]), Err("missing_model"));
        assert_eq!(peek(&bodies[6]), Ok("sp\u{1f600}ace".into()));
        // Refused as parsing refuses them, wherever in the body they are.
        assert_eq!(peek(&bodies[10]), Err("invalid_json"));
        assert_eq!(peek(&bodies[11]), Err("invalid_json"));
        assert_eq!(peek(&bodies[13]), Ok("m".into()));
        assert_eq!(peek(&bodies[14]), Err("invalid_json"));
    }

    #[test]
    fn peeking_a_huge_body_finds_the_model_wherever_it_is() {
        let prompt = "lorem \\\"ipsum\\\" \\u00e9 ".repeat(200_000);
        let first = format!(r#"{{"model":"big","prompt":"{prompt}","max_tokens":1}}"#);
        let last = format!(r#"{{"prompt":"{prompt}","stop":["\n"],"model":"big"}}"#);
        let none = format!(r#"{{"prompt":"{prompt}"}}"#);
        let cut = &first[..first.len() - 2];
        assert!(first.len() > 4 << 20);
        assert_eq!(peek_model(first.as_bytes()).unwrap(), "big");
        assert_eq!(peek_model(last.as_bytes()).unwrap(), "big");
        let e = peek_model(none.as_bytes()).unwrap_err();
        assert_eq!(
            (e.status, e.reason),
            (StatusCode::BAD_REQUEST, "missing_model")
        );
        assert!(e.message.contains("add a `model` field"), "{}", e.message);
        assert_eq!(
            peek_model(cut.as_bytes()).unwrap_err().reason,
            "invalid_json"
        );
    }

    #[tokio::test]
    async fn bodies_over_the_cap_are_refused_with_413() {
        let big = Body::from(vec![b'x'; 5000]);
        let e = read_body(big, 4096, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(
            (e.status, e.reason),
            (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
        );
        let ok = read_body(Body::from("{}"), 4096, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(&ok[..], b"{}");
    }

    #[test]
    fn errors_carry_model_reason_and_retry_after() {
        let resp = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "queue_full",
            "chat",
            "full".into(),
        )
        .retry_after(1)
        .into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
    }
}
