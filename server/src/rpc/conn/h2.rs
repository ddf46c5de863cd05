//! One HTTP/2 connection of the client port, served with the `h2` crate:
//! each stream runs as its own task, on [`super::unary`] when it is one of
//! KV's unary calls and through the port's service ([`super::bridge`])
//! otherwise.

use std::future::poll_fn;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use super::super::ClientService;
use super::{bridge, unary};
use crate::tls::TlsAddr;

/// Flow-control windows, frame and header limits, and the send buffer per
/// stream: hyper's HTTP/2 server defaults, which kvd served with before.
const STREAM_WINDOW: u32 = 1 << 20;
const CONN_WINDOW: u32 = 1 << 20;
const MAX_FRAME: u32 = 16 << 10;
const MAX_HEADER_LIST: u32 = 16 << 10;
const MAX_SEND_BUFFER: usize = 400 << 10;
const MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// etcd's default `--max-concurrent-streams` (Go's math.MaxUint32): a gRPC
/// client at the limit queues new calls behind its open streams, and
/// kube-apiserver keeps many watches open on one connection.
const MAX_CONCURRENT_STREAMS: u32 = u32::MAX;

/// Serves `io` (past its preface check) until the client closes it.
pub async fn serve<T>(io: T, svc: ClientService, peer: Option<ConnectInfo<TlsAddr>>)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handshake = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .handshake::<_, Bytes>(io);
    let mut conn = match handshake.await {
        Ok(c) => c,
        Err(e) => return tracing::debug!(error = %e, "HTTP/2 handshake failed"),
    };
    // Polling for the next stream also drives the connection's reads and writes.
    while let Some(next) = conn.accept().await {
        let (req, respond) = match next {
            Ok(s) => s,
            Err(e) => return tracing::debug!(error = %e, "HTTP/2 connection failed"),
        };
        let (mut parts, body) = req.into_parts();
        if let Some(p) = &peer {
            parts.extensions.insert(p.clone());
        }
        if unary::takes(&parts) {
            tokio::spawn(unary::serve(svc.grpc.clone(), parts, body, respond));
        } else {
            let req = Request::from_parts(parts, Body::new(bridge::H2Body::new(body)));
            tokio::spawn(bridge::serve(svc.clone(), req, respond));
        }
    }
    // The client sent GOAWAY: finish writing what the open streams answer.
    if let Err(e) = poll_fn(|cx| conn.poll_closed(cx)).await {
        tracing::debug!(error = %e, "HTTP/2 connection closed with an error");
    }
}
