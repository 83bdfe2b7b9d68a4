//! Who may call the Control API: the coordinator's gate in front of the
//! Control service (bearer tokens, read or admin), and the CLI's side that
//! attaches `authorization: Bearer <token>` to every call.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::metadata::MetadataValue;
use tonic::server::NamedService;
use tonic::Status;

use crate::config::coordinator::AuthSettings;

use super::tokens::{check_token, Access, TokenFileError, TokenSet};

/// Control methods a read token may call; anything else, including a method
/// added later and not listed here, needs an admin token.
pub fn is_read_method(method: &str) -> bool {
    method.starts_with("List")
        || method.starts_with("Get")
        || matches!(method, "FollowEvents" | "Explain" | "ReplicaLogs")
}

/// The Control API's access rule: open, or tokens required.
#[derive(Debug, Clone)]
pub struct ControlAuth {
    tokens: Option<Arc<TokenSet>>,
}

impl ControlAuth {
    /// Loads `[auth] tokens_file`; without one the API is open, and says so
    /// in the log once, at start.
    pub fn from_settings(auth: &AuthSettings) -> Result<ControlAuth, TokenFileError> {
        match &auth.tokens_file {
            None => {
                tracing::warn!(
                    "no [auth] tokens_file: the Control API is open to anyone who can reach the gRPC port"
                );
                Ok(ControlAuth::open())
            }
            Some(path) => {
                let tokens = TokenSet::load(path)?;
                warn_if_others_can_read(path);
                tracing::info!(
                    tokens = tokens.len(),
                    file = %path.display(),
                    "the Control API requires a bearer token"
                );
                Ok(ControlAuth::with_tokens(tokens))
            }
        }
    }

    pub fn open() -> ControlAuth {
        ControlAuth { tokens: None }
    }

    pub fn with_tokens(tokens: TokenSet) -> ControlAuth {
        ControlAuth {
            tokens: Some(Arc::new(tokens)),
        }
    }

    /// Whether tokens are required at all.
    pub fn requires_tokens(&self) -> bool {
        self.tokens.is_some()
    }

    /// Decides one call: `method` is the Control method's name
    /// ("ApplyModel"), `authorization` the header as sent.
    pub fn authorize(&self, method: &str, authorization: Option<&[u8]>) -> Result<(), Status> {
        let Some(access) = self.access(authorization)? else {
            return Ok(());
        };
        match access {
            Access::Admin => Ok(()),
            Access::Read if is_read_method(method) => Ok(()),
            // A gateway's routing stream wakes models that have a queue.
            Access::Wake if matches!(method, "WakeModel" | "Routes") => Ok(()),
            Access::Read => Err(Status::permission_denied(format!(
                "token is read-only; `{}` needs an admin token",
                command_of(method)
            ))),
            Access::Wake => Err(Status::permission_denied(format!(
                "token may only wake models; `{}` needs an admin token",
                command_of(method)
            ))),
        }
    }

    /// Decides a request on the coordinator's HTTP port: `allowed` are the
    /// roles besides admin that may make it. Ok when no tokens are set.
    pub fn authorize_http(
        &self,
        allowed: &[Access],
        what: &str,
        authorization: Option<&[u8]>,
    ) -> Result<(), Status> {
        match self.access(authorization)? {
            None | Some(Access::Admin) => Ok(()),
            Some(a) if allowed.contains(&a) => Ok(()),
            Some(a) => {
                let mut roles: Vec<&str> = allowed.iter().map(|a| a.name()).collect();
                roles.push("admin");
                Err(Status::permission_denied(format!(
                    "a {} token may not {what}; it needs a token with the role {}",
                    a.name(),
                    roles.join(" or ")
                )))
            }
        }
    }

    /// The access the presented header grants; None when no tokens are set.
    fn access(&self, authorization: Option<&[u8]>) -> Result<Option<Access>, Status> {
        let Some(tokens) = &self.tokens else {
            return Ok(None);
        };
        let Some(header) = authorization else {
            return Err(Status::unauthenticated(
                "this coordinator requires a token: set GPUFLEET_TOKEN (or --token-file)",
            ));
        };
        let token = std::str::from_utf8(header)
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated(
                    "the authorization header must be `Bearer <token>`; set GPUFLEET_TOKEN",
                )
            })?;
        if let Err(problem) = check_token(token) {
            return Err(Status::unauthenticated(format!(
                "the token {problem}; check GPUFLEET_TOKEN"
            )));
        }
        match tokens.access_of(token) {
            None => Err(Status::unauthenticated(
                "the token is not known to this coordinator; check GPUFLEET_TOKEN",
            )),
            Some(access) => Ok(Some(access)),
        }
    }

    /// Puts this rule in front of the Control service.
    pub fn guard<S>(&self, inner: S) -> ControlGuard<S> {
        ControlGuard {
            auth: self.clone(),
            inner,
        }
    }
}

/// The CLI command an operator typed for a Control method, so the refusal
/// speaks their language.
fn command_of(method: &str) -> String {
    let known = match method {
        "ApplyModel" => "apply",
        "DeleteModel" => "model rm",
        "ScaleModel" => "model scale",
        "WakeModel" => "model wake",
        "CordonNode" => "node cordon",
        "UncordonNode" => "node uncordon",
        "DrainNode" => "node drain",
        "WarmStart" => "warm start",
        "WarmEvict" => "warm evict",
        "Backup" => "coordinator backup",
        other => other,
    };
    known.to_string()
}

fn warn_if_others_can_read(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                file = %path.display(),
                "the tokens file is readable by group or others; chmod 600 it"
            );
        }
    }
}

/// The Control service behind [`ControlAuth`]: a refused call never
/// reaches the handler.
#[derive(Debug, Clone)]
pub struct ControlGuard<S> {
    auth: ControlAuth,
    inner: S,
}

impl<S: NamedService> NamedService for ControlGuard<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for ControlGuard<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // gRPC paths are "/package.Service/Method".
        let method = req.uri().path().rsplit('/').next().unwrap_or_default();
        let header = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        match self.auth.authorize(method, header) {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(status) => {
                tracing::debug!(method, code = ?status.code(), "Control call refused");
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

/// The CLI's half: attaches the bearer token to every Control call.
#[derive(Clone)]
pub struct BearerToken {
    header: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = if self.header.is_some() { "set" } else { "none" };
        write!(f, "BearerToken({state})")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientTokenError {
    #[error("{origin} {problem}")]
    Shape {
        origin: String,
        problem: super::tokens::TokenProblem,
    },
    #[error("cannot read the token file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl BearerToken {
    /// No token: calls go out without an authorization header.
    pub fn none() -> BearerToken {
        BearerToken { header: None }
    }

    /// A token, checked before anything is sent; `origin` names where it came
    /// from ("GPUFLEET_TOKEN") in the error.
    pub fn new(token: &str, origin: &str) -> Result<BearerToken, ClientTokenError> {
        check_token(token).map_err(|problem| ClientTokenError::Shape {
            origin: origin.to_string(),
            problem,
        })?;
        let mut value: MetadataValue<tonic::metadata::Ascii> = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientTokenError::Shape {
                origin: origin.to_string(),
                problem: super::tokens::TokenProblem::Characters,
            })?;
        // Keeps it out of HPACK tables and debug output.
        value.set_sensitive(true);
        Ok(BearerToken {
            header: Some(value),
        })
    }

    /// `--token-file PATH` beats `GPUFLEET_TOKEN` (`env`); neither: no token.
    /// A file's one trailing newline is not part of the token.
    pub fn from_sources(
        token_file: Option<&Path>,
        env: Option<String>,
    ) -> Result<BearerToken, ClientTokenError> {
        if let Some(path) = token_file {
            let text = std::fs::read_to_string(path).map_err(|source| ClientTokenError::Read {
                path: path.display().to_string(),
                source,
            })?;
            let token = text
                .strip_suffix('\n')
                .map(|t| t.strip_suffix('\r').unwrap_or(t))
                .unwrap_or(&text);
            return BearerToken::new(token, &format!("the token in {}", path.display()));
        }
        match env {
            Some(token) => BearerToken::new(&token, "GPUFLEET_TOKEN"),
            None => Ok(BearerToken::none()),
        }
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: &str = "admin-token-abcdefghij";
    const READ: &str = "read-token-abcdefghij";

    fn guarded() -> ControlAuth {
        let set = TokenSet::parse(
            &format!("admin {ADMIN}\nread {READ}\n"),
            Path::new("tokens"),
        )
        .unwrap();
        ControlAuth::with_tokens(set)
    }

    fn bearer(t: &str) -> Vec<u8> {
        format!("Bearer {t}").into_bytes()
    }

    #[test]
    fn open_api_lets_every_call_through() {
        assert!(ControlAuth::open().authorize("ApplyModel", None).is_ok());
    }

    #[test]
    fn missing_token_is_unauthenticated_and_says_what_to_set() {
        let s = guarded().authorize("ListNodes", None).unwrap_err();
        assert_eq!(s.code(), tonic::Code::Unauthenticated);
        assert!(s
            .message()
            .starts_with("this coordinator requires a token: set GPUFLEET_TOKEN"));
    }

    #[test]
    fn read_token_reads_but_cannot_write() {
        let auth = guarded();
        for m in [
            "ListNodes",
            "GetModel",
            "FollowEvents",
            "Explain",
            "ListEvents",
        ] {
            assert!(auth.authorize(m, Some(&bearer(READ))).is_ok(), "{m}");
        }
        let s = auth
            .authorize("ApplyModel", Some(&bearer(READ)))
            .unwrap_err();
        assert_eq!(s.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            s.message(),
            "token is read-only; `apply` needs an admin token"
        );
        assert!(auth
            .authorize("SomeFutureMethod", Some(&bearer(READ)))
            .is_err());
        // A backup holds the key that signs assignments.
        assert!(auth.authorize("Backup", Some(&bearer(READ))).is_err());
    }

    #[test]
    fn a_wake_token_may_wake_and_open_a_gateways_routing_stream_only() {
        const WAKE: &str = "wake-token-abcdefghij";
        let set = TokenSet::parse(&format!("wake {WAKE}\n"), Path::new("tokens")).unwrap();
        let auth = ControlAuth::with_tokens(set);
        for m in ["WakeModel", "Routes"] {
            assert!(auth.authorize(m, Some(&bearer(WAKE))).is_ok(), "{m}");
        }
        let s = auth
            .authorize("ApplyModel", Some(&bearer(WAKE)))
            .unwrap_err();
        assert_eq!(s.code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn admin_token_may_do_everything() {
        let auth = guarded();
        for m in ["ApplyModel", "DeleteModel", "DrainNode", "ListNodes"] {
            assert!(auth.authorize(m, Some(&bearer(ADMIN))).is_ok(), "{m}");
        }
    }

    #[test]
    fn wrong_malformed_and_huge_tokens_are_refused() {
        let auth = guarded();
        let unknown = auth
            .authorize("ListNodes", Some(&bearer("nope-nope-nope-nope")))
            .unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::Unauthenticated);
        assert!(unknown.message().contains("not known"));
        let basic = auth
            .authorize("ListNodes", Some(format!("Basic {ADMIN}").as_bytes()))
            .unwrap_err();
        assert!(basic.message().contains("Bearer <token>"));
        let huge = auth
            .authorize("ListNodes", Some(&bearer(&"x".repeat(1 << 20))))
            .unwrap_err();
        assert!(
            huge.message().contains("1048576 characters"),
            "{}",
            huge.message()
        );
        let spaced = auth
            .authorize("ListNodes", Some(&bearer(&format!("{ADMIN} x"))))
            .unwrap_err();
        assert!(spaced.message().contains("whitespace"));
    }

    #[test]
    fn client_checks_the_token_before_sending_it() {
        let e = BearerToken::new("with space inside it", "GPUFLEET_TOKEN")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("GPUFLEET_TOKEN contains whitespace"), "{e}");
        assert!(BearerToken::new(ADMIN, "GPUFLEET_TOKEN").is_ok());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, format!("{ADMIN}\n")).unwrap();
        let t = BearerToken::from_sources(Some(&file), Some("ignored".into())).unwrap();
        assert!(t.header.is_some());
        assert!(BearerToken::from_sources(None, None)
            .unwrap()
            .header
            .is_none());
    }
}
