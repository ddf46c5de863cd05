//! The load generator's connections for the streaming workloads (watch,
//! lease keep-alive): one HTTP/2 connection each, used directly by tonic's
//! generated clients; and [`dial`], which the unary connections of
//! `unary.rs` share.
//!
//! tonic's `Channel` puts a buffer task between every call and its
//! connection (and reconnects, which a benchmark should report as errors
//! instead): perf put that task at 11% of `kvctl bench`'s CPU at 1,000
//! clients, CPU taken from the server it measures on a shared machine.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kvd::rpc::coalesce::Coalesced;
use tokio::net::TcpStream;
use tonic::codegen::http::uri::{Authority, Scheme};
use tonic::codegen::http::{Request, Response, Uri};

use super::{BoxError, Common, endpoint_url, leader_endpoint};

/// One connection; clones share it (HTTP/2 streams), as a `Channel`'s do.
#[derive(Clone)]
pub(crate) struct Conn {
    send: SendRequest<tonic::body::Body>,
    authority: Authority,
}

impl tower::Service<Request<tonic::body::Body>> for Conn {
    type Response = Response<hyper::body::Incoming>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.send.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<tonic::body::Body>) -> Self::Future {
        // The generated clients give the path only; the origin is the connection's.
        let mut uri = req.uri().clone().into_parts();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(self.authority.clone());
        match Uri::from_parts(uri) {
            Ok(u) => *req.uri_mut() = u,
            Err(e) => return Box::pin(std::future::ready(Err(e.into()))),
        }
        let sent = self.send.send_request(req);
        Box::pin(async move { sent.await.map_err(Into::into) })
    }
}

/// The URL of each of `--conns` connections, spread over the endpoints (or
/// all the leader's).
pub(crate) async fn connection_urls(c: &Common) -> Result<Vec<String>, String> {
    let endpoints = if c.target_leader { vec![leader_endpoint(c).await?] } else { c.endpoints.clone() };
    Ok((0..c.conns.max(1)).map(|i| endpoint_url(&endpoints[i % endpoints.len()])).collect())
}

/// `--conns` connections, spread over the endpoints (or all to the leader).
pub(crate) async fn connections(c: &Common) -> Result<Vec<Conn>, String> {
    let mut conns = Vec::new();
    for url in connection_urls(c).await? {
        conns.push(connect(&url).await.map_err(|e| format!("{url}: {e}"))?);
    }
    Ok(conns)
}

/// A TCP connection to `url`'s host and port (no delay), with its authority.
/// Requests leave in batches, as the server's replies do
/// (`kvd::rpc::coalesce`): without it each request was its own `writev`,
/// and the loopback send path a third of the load generator's CPU.
pub(crate) async fn dial(url: &str) -> Result<(Coalesced<TcpStream>, Authority), BoxError> {
    let uri: Uri = url.parse()?;
    let authority = uri.authority().cloned().ok_or("no host in the endpoint")?;
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    let tcp = TcpStream::connect((host, authority.port_u16().unwrap_or(2379))).await?;
    tcp.set_nodelay(true)?;
    Ok((Coalesced::new(tcp), authority))
}

async fn connect(url: &str) -> Result<Conn, BoxError> {
    let (io, authority) = dial(url).await?;
    let (send, connection) =
        hyper::client::conn::http2::Builder::new(TokioExecutor::new()).handshake(TokioIo::new(io)).await?;
    tokio::spawn(connection);
    Ok(Conn { send, authority })
}
