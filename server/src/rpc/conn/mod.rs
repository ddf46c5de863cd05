//! The client port's connections. HTTP/2 (every gRPC client) is served with
//! the `h2` crate directly, so that KV's unary calls skip hyper's and tonic's
//! layers ([`unary`]); every other stream goes to the port's tower service
//! through [`bridge`]. HTTP/1 (curl, the JSON gateway, `/metrics`) is served
//! by hyper. Which one a connection speaks is read from its first bytes
//! ([`sniff`]), with or without TLS.

mod bridge;
mod budget;
mod h2;
mod sniff;
mod unary;

use std::io;
use std::sync::Arc;

use axum::extract::ConnectInfo;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tower::Service;

use super::ClientService;
use super::coalesce::Coalesced;
use crate::tls::{Reloading, TlsAddr, TlsListener};

/// Serves the client port on `l` (over TLS with `tls`) until the listener fails.
pub async fn serve(l: TcpListener, tls: Option<Arc<Reloading>>, svc: ClientService) -> io::Result<()> {
    let Some(tls) = tls else {
        loop {
            let (tcp, _) = crate::sockets::accept(&l).await;
            tokio::spawn(connection(tcp, None, svc.clone()));
        }
    };
    let mut l = TlsListener::new(l, tls)?;
    loop {
        let (io, addr) = l.next().await;
        tokio::spawn(connection(io, Some(ConnectInfo(addr)), svc.clone()));
    }
}

/// One accepted connection, until it closes.
async fn connection<T>(mut io: T, peer: Option<ConnectInfo<TlsAddr>>, svc: ClientService)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (is_h2, read) = match sniff::sniff(&mut io).await {
        Ok(s) => s,
        Err(e) => return tracing::debug!(error = %e, "connection closed before its first request"),
    };
    let io = Coalesced::new(sniff::Rewind::new(read, io));
    if is_h2 {
        return h2::serve(io, svc, peer).await;
    }
    let hyper_svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        if let Some(p) = &peer {
            req.extensions_mut().insert(p.clone());
        }
        let mut svc = svc.clone();
        async move { svc.call(req.map(axum::body::Body::new)).await }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), hyper_svc).await {
        tracing::debug!(error = %e, "HTTP/1 connection failed");
    }
}
