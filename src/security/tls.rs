//! TLS on the coordinator's gRPC port: the server side (fleet CA, client
//! certificates optional at the TLS layer, required by agent sessions) and
//! the client side the agent and the CLI share, which checks the
//! coordinator's certificate against the fleet CA *and* the coordinator role.
//!
//! tonic's own client TLS cannot check a role, so clients connect through
//! [`CoordinatorConnector`] (rustls, ring provider) and hand tonic a plain
//! `http://` endpoint: tonic would otherwise insist on doing TLS itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use tonic::codegen::{http::Uri, BoxFuture, Service};
use tonic::transport::{Certificate, Channel, Endpoint, Identity, Server, ServerTlsConfig};

use crate::config::TlsSettings;

use super::identity::{CertIdentity, IdentityError};

/// A TLS handshake that has not finished by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {}: {source}", .path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {} holds no PEM certificate", .path.display())]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("{what} {} holds no usable PEM private key: {why}", .path.display())]
    BadKey {
        what: &'static str,
        path: PathBuf,
        why: String,
    },
    #[error("{what} {} is not a CA certificate rustls can use: {why}", .path.display())]
    BadCa {
        what: &'static str,
        path: PathBuf,
        why: String,
    },
    #[error("{} cannot be used here: {source}", .path.display())]
    WrongRole {
        path: PathBuf,
        #[source]
        source: IdentityError,
    },
    #[error("[tls] is configured, so the coordinator URL must start with https://, not `{0}`")]
    NeedsHttps(String),
    #[error("the coordinator URL `{0}` is https:// but no TLS is configured; {1}")]
    NeedsCa(String, &'static str),
    #[error("a CA is given ({0}) but the coordinator URL `{1}` is http://; use https:// to verify the coordinator")]
    CaWithoutHttps(String, String),
    #[error("cannot set up TLS: {0}")]
    Setup(String),
    #[error("{what} {} is readable by group or others (mode {mode:04o}); a private key must be private: `chmod 600 {}`", .path.display(), .path.display())]
    KeyNotPrivate {
        what: &'static str,
        path: PathBuf,
        mode: u32,
    },
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Refuses a key file that group or others may read or write, as ssh does:
/// such a key may already be someone else's.
fn key_is_private(what: &'static str, path: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(TlsError::KeyNotPrivate {
            what,
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

fn private_key(what: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    key_is_private(what, path)?;
    let pem = read(what, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::BadKey {
        what,
        path: path.to_path_buf(),
        why: e.to_string(),
    })
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certificates("the CA bundle", path)? {
        store.add(cert).map_err(|e| TlsError::BadCa {
            what: "the CA bundle",
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
    }
    Ok(store)
}

/// The three `[tls]` paths, present only when TLS is on.
fn paths(settings: &TlsSettings) -> Option<(&Path, &Path, &Path)> {
    match (&settings.ca, &settings.cert, &settings.key) {
        (Some(ca), Some(cert), Some(key)) => Some((ca, cert, key)),
        _ => None,
    }
}

/// The coordinator's gRPC server builder: TLS with the fleet CA when `[tls]`
/// is set (client certificates optional at this layer; agent sessions demand
/// one), plain otherwise. The coordinator's own certificate must carry the
/// coordinator role, or every agent would refuse it.
pub fn grpc_server(settings: &TlsSettings) -> Result<Server, TlsError> {
    let Some((ca, cert, key)) = paths(settings) else {
        return Ok(Server::builder());
    };
    let chain = certificates("the coordinator certificate", cert)?;
    CertIdentity::read(&chain[0])
        .and_then(|id| id.require_coordinator())
        .map_err(|source| TlsError::WrongRole {
            path: cert.to_path_buf(),
            source,
        })?;
    private_key("the coordinator key", key)?;
    roots(ca)?;
    let config = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            read("the coordinator certificate", cert)?,
            read("the coordinator key", key)?,
        ))
        .client_ca_root(Certificate::from_pem(read("the CA bundle", ca)?))
        .client_auth_optional(true)
        .timeout(HANDSHAKE_TIMEOUT);
    Server::builder()
        .tls_config(config)
        .map_err(|e| TlsError::Setup(super::error_chain(&e)))
}

/// A client's TLS settings for talking to the coordinator.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls")
    }
}

impl ClientTls {
    /// Trusts `ca` for a coordinator-role certificate; presents
    /// `identity` (certificate chain file, key file) when given.
    pub fn new(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<ClientTls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots(ca)?), provider.clone())
                .build()
                .map_err(|e| TlsError::BadCa {
                    what: "the CA bundle",
                    path: ca.to_path_buf(),
                    why: e.to_string(),
                })?;
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(CoordinatorVerifier { inner }));
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    certificates("the agent certificate", cert)?,
                    private_key("the agent key", key)?,
                )
                .map_err(|e| TlsError::BadKey {
                    what: "the agent key",
                    path: key.to_path_buf(),
                    why: format!("it does not fit {}: {e}", cert.display()),
                })?,
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(ClientTls {
            config: Arc::new(config),
        })
    }
}

/// The agent's TLS from its `[tls]` table, checked against its coordinator
/// URL (TLS and https:// go together) and its node name (a certificate for
/// another node is only warned about here: the coordinator refuses the
/// session and says why, in both logs).
pub fn agent_tls(
    settings: &TlsSettings,
    coordinator: &str,
    node_name: &str,
) -> Result<Option<ClientTls>, TlsError> {
    let https = coordinator.starts_with("https://");
    let Some((ca, cert, key)) = paths(settings) else {
        if https {
            return Err(TlsError::NeedsCa(
                coordinator.to_string(),
                "set [tls] ca, cert and key in the agent config (files from `gpufleet tls init`)",
            ));
        }
        return Ok(None);
    };
    if !https {
        return Err(TlsError::NeedsHttps(coordinator.to_string()));
    }
    let chain = certificates("the agent certificate", cert)?;
    let id = CertIdentity::read(&chain[0]).map_err(|source| TlsError::WrongRole {
        path: cert.to_path_buf(),
        source,
    })?;
    match id.agent_node() {
        Ok(node) if node == node_name => {}
        Ok(node) => tracing::warn!(
            cert = %cert.display(),
            "the agent certificate is for node `{node}` but this agent is `{node_name}`; the coordinator will refuse the session"
        ),
        Err(e) => {
            return Err(TlsError::WrongRole {
                path: cert.to_path_buf(),
                source: e,
            })
        }
    }
    ClientTls::new(ca, Some((cert, key))).map(Some)
}

/// The CLI's TLS: `ca` (GPUFLEET_CA) and an https:// URL go together; the
/// CLI shows no certificate (it authenticates with a token).
pub fn cli_tls(ca: Option<&Path>, coordinator: &str) -> Result<Option<ClientTls>, TlsError> {
    match (ca, coordinator.starts_with("https://")) {
        (None, false) => Ok(None),
        (Some(ca), true) => ClientTls::new(ca, None).map(Some),
        (None, true) => Err(TlsError::NeedsCa(
            coordinator.to_string(),
            "set GPUFLEET_CA (or --ca) to the fleet's ca.pem",
        )),
        (Some(ca), false) => Err(TlsError::CaWithoutHttps(
            ca.display().to_string(),
            coordinator.to_string(),
        )),
    }
}

/// The endpoint for `url`. With TLS the scheme tonic sees is http (our
/// connector does the TLS) while requests still say https.
pub fn endpoint(url: &str, tls: Option<&ClientTls>) -> Result<Endpoint, tonic::transport::Error> {
    match (tls, url.strip_prefix("https://")) {
        (Some(_), Some(rest)) => {
            let plain = Endpoint::from_shared(format!("http://{rest}"))?;
            Ok(match url.parse::<Uri>() {
                Ok(origin) => plain.origin(origin),
                Err(_) => plain,
            })
        }
        _ => Endpoint::from_shared(url.to_string()),
    }
}

/// Connects `endpoint` (from [`endpoint`]), through TLS when `tls` is set.
pub async fn connect(
    endpoint: Endpoint,
    tls: Option<&ClientTls>,
) -> Result<Channel, tonic::transport::Error> {
    match tls {
        None => endpoint.connect().await,
        Some(tls) => {
            endpoint
                .connect_with_connector(CoordinatorConnector {
                    config: tls.config.clone(),
                })
                .await
        }
    }
}

/// TCP, then a rustls handshake that checks the coordinator's role.
#[derive(Clone)]
pub struct CoordinatorConnector {
    config: Arc<rustls::ClientConfig>,
}

impl Service<Uri> for CoordinatorConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = std::io::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.config.clone();
        Box::pin(async move {
            let invalid = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, why);
            let host = uri
                .host()
                .ok_or_else(|| invalid(format!("`{uri}` names no host")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let server_name = ServerName::try_from(host.clone())
                .map_err(|e| invalid(format!("`{host}` is not a valid TLS server name: {e}")))?;
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(server_name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// The fleet CA's verdict plus the coordinator role. A certificate that is
/// not the coordinator's (an agent's, say) is refused with a message that
/// says so, even where webpki would only report a wrong key usage.
#[derive(Debug)]
struct CoordinatorVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

/// `Error::Other`, not `CertificateError::Other`: rustls prints the latter
/// with `Debug`, and the operator should read our sentence as written.
fn role_refusal(e: IdentityError) -> rustls::Error {
    rustls::Error::Other(OtherError(Arc::new(e)))
}

impl ServerCertVerifier for CoordinatorVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        let role = CertIdentity::read(end_entity).and_then(|id| id.require_coordinator());
        match (verdict, role) {
            (Ok(v), Ok(())) => Ok(v),
            (Ok(_), Err(e)) => Err(role_refusal(e)),
            (
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::InvalidPurpose
                    | CertificateError::InvalidPurposeContext { .. }
                    | CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )),
                Err(e @ IdentityError::NotCoordinator { .. }),
            ) => Err(role_refusal(e)),
            (Err(e), _) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::certs::{issue_agent, issue_coordinator, FleetCa};

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    fn verifier_for(ca: &FleetCa) -> CoordinatorVerifier {
        let mut store = RootCertStore::empty();
        store.add(der(&ca.issued.cert_pem)).unwrap();
        let inner = WebPkiServerVerifier::builder_with_provider(
            Arc::new(store),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        CoordinatorVerifier { inner }
    }

    fn verify(v: &CoordinatorVerifier, cert_pem: &str, name: &str) -> Result<(), String> {
        v.verify_server_cert(
            &der(cert_pem),
            &[],
            &ServerName::try_from(name.to_string()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    }

    #[test]
    fn coordinator_certificate_of_the_fleet_is_accepted_for_its_names() {
        let ca = FleetCa::new(30).unwrap();
        let coord = issue_coordinator(&ca, &["localhost".into(), "127.0.0.1".into()], 30).unwrap();
        let v = verifier_for(&ca);
        verify(&v, &coord.cert_pem, "localhost").unwrap();
        verify(&v, &coord.cert_pem, "127.0.0.1").unwrap();
        let e = verify(&v, &coord.cert_pem, "coord.example.net").unwrap_err();
        assert!(e.contains("not valid for name"), "{e}");
    }

    #[test]
    fn agent_certificate_posing_as_coordinator_is_refused_by_role() {
        let ca = FleetCa::new(30).unwrap();
        let agent = issue_agent(&ca, "gpu-1", 30).unwrap();
        let e = verify(&verifier_for(&ca), &agent.cert_pem, "localhost").unwrap_err();
        assert!(
            e.contains("certificate is not a coordinator certificate"),
            "{e}"
        );
    }

    #[test]
    fn coordinator_of_another_fleet_is_refused_by_the_ca() {
        let ours = FleetCa::new(30).unwrap();
        let theirs = FleetCa::new(30).unwrap();
        let coord = issue_coordinator(&theirs, &["localhost".into()], 30).unwrap();
        let e = verify(&verifier_for(&ours), &coord.cert_pem, "localhost").unwrap_err();
        assert!(e.contains("UnknownIssuer"), "{e}");
    }

    #[test]
    fn tls_and_https_go_together() {
        let none = TlsSettings::default();
        assert!(agent_tls(&none, "http://c:7460", "n").unwrap().is_none());
        let e = agent_tls(&none, "https://c:7460", "n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("is https:// but no TLS is configured"), "{e}");
        let set = TlsSettings {
            ca: Some("/x/ca.pem".into()),
            cert: Some("/x/n.pem".into()),
            key: Some("/x/n-key.pem".into()),
        };
        let e = agent_tls(&set, "http://c:7460", "n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("must start with https://"), "{e}");
        let e = cli_tls(None, "https://c:7460").unwrap_err().to_string();
        assert!(e.contains("GPUFLEET_CA"), "{e}");
        let e = cli_tls(Some(Path::new("/x/ca.pem")), "http://c:7460")
            .unwrap_err()
            .to_string();
        assert!(e.contains("use https://"), "{e}");
    }

    #[test]
    fn coordinator_refuses_to_serve_with_an_agent_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = FleetCa::new(30).unwrap();
        let agent = issue_agent(&ca, "gpu-1", 30).unwrap();
        let write = |name: &str, text: &str| {
            use std::os::unix::fs::PermissionsExt;
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            p
        };
        let settings = TlsSettings {
            ca: Some(write("ca.pem", &ca.issued.cert_pem)),
            cert: Some(write("gpu-1.pem", &agent.cert_pem)),
            key: Some(write("gpu-1-key.pem", &agent.key_pem)),
        };
        let e = grpc_server(&settings).unwrap_err().to_string();
        assert!(e.contains("gpu-1.pem cannot be used here"), "{e}");
        assert!(e.contains("not a coordinator certificate"), "{e}");
    }

    #[test]
    fn a_private_key_others_can_read_is_refused_naming_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ca = FleetCa::new(30).unwrap();
        let agent = issue_agent(&ca, "gpu-1", 30).unwrap();
        let key = dir.path().join("gpu-1-key.pem");
        std::fs::write(&key, &agent.key_pem).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = private_key("the agent key", &key).unwrap_err().to_string();
            assert_eq!(
                e,
                format!(
                    "the agent key {} is readable by group or others (mode {mode:04o}); a private key must be private: `chmod 600 {}`",
                    key.display(),
                    key.display()
                )
            );
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            assert!(private_key("the agent key", &key).is_ok());
        }
    }
}
