//! Readiness probe: an HTTP GET on the engine's health path answering 2xx, or
//! a bare TCP connect when the engine has no health path.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Longest a single probe may take; a server still loading weights often
/// accepts connections but answers slowly.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct ReadinessProbe {
    addr: SocketAddr,
    /// `None` probes with a TCP connect.
    url: Option<String>,
    client: reqwest::Client,
}

impl ReadinessProbe {
    pub fn new(host: IpAddr, port: u16, health_path: &str) -> Self {
        let addr = SocketAddr::new(host, port);
        let url = (!health_path.is_empty()).then(|| {
            let slash = if health_path.starts_with('/') {
                ""
            } else {
                "/"
            };
            format!("http://{addr}{slash}{health_path}")
        });
        // Building a client without TLS or proxies cannot fail in practice;
        // fall back to the default client rather than lose the probe.
        let client = reqwest::Client::builder()
            .timeout(PROBE_TIMEOUT)
            .no_proxy()
            .build()
            .unwrap_or_default();
        ReadinessProbe { addr, url, client }
    }

    /// Ok when the server is ready; Err says what the probe saw.
    pub async fn check(&self) -> Result<(), String> {
        match &self.url {
            Some(url) => {
                let resp = self
                    .client
                    .get(url)
                    .send()
                    .await
                    .map_err(|e| format!("GET {url}: {e}"))?;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("GET {url}: {}", resp.status()))
                }
            }
            None => {
                match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(self.addr))
                    .await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!("connect {}: {e}", self.addr)),
                    Err(_) => Err(format!("connect {}: timed out", self.addr)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    async fn http_server(status: &'static str) -> u16 {
        let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let resp =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn http_probe_wants_a_2xx() {
        let ok = http_server("200 OK").await;
        assert!(ReadinessProbe::new(LOCAL, ok, "/health")
            .check()
            .await
            .is_ok());
        assert!(ReadinessProbe::new(LOCAL, ok, "health")
            .check()
            .await
            .is_ok());
        let loading = http_server("503 Service Unavailable").await;
        let err = ReadinessProbe::new(LOCAL, loading, "/health")
            .check()
            .await
            .unwrap_err();
        assert!(err.contains("503"), "{err}");
    }

    #[tokio::test]
    async fn tcp_probe_wants_a_listener() {
        let listener = std::net::TcpListener::bind((LOCAL, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(ReadinessProbe::new(LOCAL, port, "").check().await.is_ok());
        drop(listener);
        assert!(ReadinessProbe::new(LOCAL, port, "").check().await.is_err());
    }
}
