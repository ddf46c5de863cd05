//! Transport security with etcd's flags: server certificates for the client
//! and peer listeners (reloaded when their files change, so rotation needs
//! no restart), optional client-certificate authentication against a
//! trusted CA, and the client side of peer connections.
//!
//! A TLS listener accepts TCP connections and runs each handshake on its own
//! task, so a slow or hostile client never holds up the others; finished
//! connections carry the client certificate's common name, which auth uses
//! as the user when a request has no token (as etcd does).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

/// How often certificate files are checked for changes.
const RELOAD_CHECK: Duration = Duration::from_secs(1);
/// A handshake slower than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The files of one side (client or peer), as the flags name them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Trusted CA: verifies client certificates (server side) or the server
    /// (client side).
    pub trusted_ca: Option<PathBuf>,
    /// Require and verify client certificates.
    pub client_cert_auth: bool,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File { path: path.into(), msg: e.to_string() })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    let certs = certs.map_err(|e| TlsError::File { path: path.into(), msg: format!("not PEM certificates: {e}") })?;
    if certs.is_empty() {
        return Err(TlsError::File { path: path.into(), msg: "no certificate in the file".into() });
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read(path)?)
        .map_err(|e| TlsError::File { path: path.into(), msg: format!("no PEM private key: {e}") })
}

fn roots(path: &Path) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for c in certs(path)? {
        store.add(c).map_err(|e| TlsError::File { path: path.into(), msg: format!("bad CA certificate: {e}") })?;
    }
    Ok(Arc::new(store))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds a server configuration from the files as they are now.
pub fn server_config(f: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match (&f.trusted_ca, f.client_cert_auth) {
        (Some(ca), true) => {
            let v = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider())
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(v)
        }
        (None, true) => return Err(TlsError::Config("client certificate auth needs a trusted CA file".into())),
        _ => builder.with_no_client_auth(),
    };
    let mut cfg =
        builder.with_single_cert(certs(&f.cert)?, key(&f.key)?).map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A server configuration that follows its files: checked every second,
/// rebuilt when one changed; a broken new file keeps the old configuration.
pub struct Reloading {
    files: TlsFiles,
    current: RwLock<(Arc<rustls::ServerConfig>, Vec<Option<SystemTime>>)>,
}

fn mtimes(f: &TlsFiles) -> Vec<Option<SystemTime>> {
    [Some(&f.cert), Some(&f.key), f.trusted_ca.as_ref()]
        .into_iter()
        .flatten()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

impl Reloading {
    pub fn new(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let cfg = server_config(&files)?;
        let stamps = mtimes(&files);
        let r = Arc::new(Self { files, current: RwLock::new((cfg, stamps)) });
        let weak = Arc::downgrade(&r);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RELOAD_CHECK).await;
                let Some(r) = weak.upgrade() else { return };
                r.reload_if_changed();
            }
        });
        Ok(r)
    }

    fn reload_if_changed(&self) {
        let stamps = mtimes(&self.files);
        if stamps == self.current.read().1 {
            return;
        }
        match server_config(&self.files) {
            Ok(cfg) => {
                *self.current.write() = (cfg, stamps);
                tracing::info!(cert = %self.files.cert.display(), "reloaded TLS certificates");
            }
            Err(e) => tracing::warn!(error = %e, "new TLS certificates are not usable; keeping the old ones"),
        }
    }

    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        self.current.read().0.clone()
    }
}

/// A connection's remote address and its client certificate's common name.
#[derive(Debug, Clone)]
pub struct TlsAddr {
    pub addr: SocketAddr,
    pub common_name: Option<String>,
}

/// The common name of a DER certificate's subject.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

/// A TLS listener for `axum::serve`.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, TlsAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, tls: Arc<Reloading>) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (sock, addr) = crate::sockets::accept(&tcp).await;
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
                        Ok(Ok(stream)) => {
                            let cn = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .and_then(|c| common_name(c));
                            let _ = tx.send((stream, TlsAddr { addr, common_name: cn })).await;
                        }
                        Ok(Err(e)) => tracing::debug!(remote = %addr, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(remote = %addr, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { rx, local })
    }

    /// The next connection whose handshake succeeded.
    pub async fn next(&mut self) -> (TlsStream<TcpStream>, TlsAddr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept loop never ends while the listener lives.
            None => std::future::pending().await,
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = TlsAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        self.next().await
    }

    fn local_addr(&self) -> io::Result<TlsAddr> {
        Ok(TlsAddr { addr: self.local, common_name: None })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for TlsAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

impl
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'_, crate::rpc::coalesce::CoalescingListener<TlsListener>>,
    > for TlsAddr
{
    fn connect_info(
        stream: axum::serve::IncomingStream<'_, crate::rpc::coalesce::CoalescingListener<TlsListener>>,
    ) -> Self {
        stream.remote_addr().clone()
    }
}

/// A channel endpoint for a peer URL, with TLS when the URL is https.
pub fn endpoint(
    url: &str,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> Result<tonic::transport::Endpoint, String> {
    let ep = tonic::transport::Endpoint::from_shared(url.to_string()).map_err(|e| format!("{url}: {e}"))?;
    match tls {
        Some(t) if url.starts_with("https://") => ep.tls_config(t.clone()).map_err(|e| format!("{url}: {e}")),
        _ => Ok(ep),
    }
}

/// The client side of peer connections: trust the peer CA, present our
/// peer certificate (for `--peer-client-cert-auth`).
pub fn client_config(f: &TlsFiles) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
    let mut c = tonic::transport::ClientTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(read(&f.cert)?, read(&f.key)?));
    if let Some(ca) = &f.trusted_ca {
        c = c.ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
    }
    Ok(c)
}
