//! The connections of the client and peer ports. HTTP/2 (every gRPC client,
//! every member) is served with the `h2` crate directly, so that a
//! connection's memory is bounded ([`budget`]) and, on the client port,
//! KV's unary calls skip hyper's and tonic's layers ([`unary`]); every other
//! stream goes to the port's tower service through [`bridge`]. HTTP/1
//! (curl, the JSON gateway, `/metrics`) is served by hyper. Which one a
//! connection speaks is read from its first bytes ([`sniff`]), with or
//! without TLS. An HTTP/2 client's `:authority` that h2 would refuse but
//! etcd takes is mended on the way in ([`authority`]).

mod authority;
mod bridge;
mod budget;
mod drain;
mod h2;
mod sniff;
mod unary;

pub use budget::REQUEST_BYTES;
pub use drain::{Drain, Watch};

use std::io;
use std::sync::Arc;

use axum::extract::ConnectInfo;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tower::Service;

use super::Grpc;
use super::coalesce::Coalesced;
use crate::tls::{Reloading, TlsAddr, TlsListener};

/// A port's tower service, with what the HTTP/2 layer needs to know of it.
pub trait Port:
    Service<axum::extract::Request, Response = axum::response::Response, Error = std::convert::Infallible>
    + Clone
    + Send
    + Sync
    + 'static
{
    /// The largest gRPC request message the port takes.
    fn max_message(&self) -> usize;
    /// Streams one connection may have open at once.
    fn max_streams(&self) -> u32;
    /// Bytes of request messages one connection may be reading at once.
    fn request_budget(&self) -> usize;
    /// Of the gRPC method at `path`: whether it takes one request message,
    /// and whether it answers once (and so takes one of the connection's
    /// call slots while it runs).
    fn shape(&self, path: &str) -> (bool, bool);
    /// The gRPC side, when the port answers KV's unary calls itself.
    fn direct(&self) -> Option<&Grpc> {
        None
    }
}

/// Serves a port on `l` (over TLS with `tls`) until the listener fails or
/// `drain` begins; each connection then finishes as [`drain`] describes.
pub async fn serve<P: Port>(l: TcpListener, tls: Option<Arc<Reloading>>, svc: P, drain: Watch) -> io::Result<()>
where
    P::Future: Send,
{
    let stopping = drain.stopping();
    tokio::pin!(stopping);
    let Some(tls) = tls else {
        loop {
            tokio::select! {
                (tcp, _) = crate::sockets::accept(&l) => {
                    tokio::spawn(connection(tcp, None, svc.clone(), drain.clone()));
                }
                _ = &mut stopping => return Ok(()),
            }
        }
    };
    let mut l = TlsListener::new(l, tls)?;
    loop {
        tokio::select! {
            (io, addr) = l.next() => {
                tokio::spawn(connection(io, Some(ConnectInfo(addr)), svc.clone(), drain.clone()));
            }
            _ = &mut stopping => return Ok(()),
        }
    }
}

/// One accepted connection, until it closes (`drain` holds its place in the
/// count of open connections).
async fn connection<T, P: Port>(mut io: T, peer: Option<ConnectInfo<TlsAddr>>, svc: P, drain: Watch)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    P::Future: Send,
{
    let (is_h2, read) = match sniff::sniff(&mut io).await {
        Ok(s) => s,
        Err(e) => return tracing::debug!(error = %e, "connection closed before its first request"),
    };
    if is_h2 {
        let io = Coalesced::new(sniff::Rewind::new(read, authority::Mend::new(io)));
        return h2::serve(io, svc, peer, &drain).await;
    }
    let io = Coalesced::new(sniff::Rewind::new(read, io));
    let hyper_svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        if let Some(p) = &peer {
            req.extensions_mut().insert(p.clone());
        }
        let mut svc = svc.clone();
        async move { svc.call(req.map(axum::body::Body::new)).await }
    });
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), hyper_svc);
    tokio::pin!(conn);
    let served = tokio::select! {
        r = conn.as_mut() => r,
        _ = drain.stopping() => {
            // Closes once the request under way (if any) is answered.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "HTTP/1 connection failed");
    }
}
