//! One HTTP/2 connection of a port, served with the `h2` crate: on the
//! client port KV's unary calls on [`super::unary`] (writes on the
//! connection's task, reads as their own tasks), every other stream as its
//! own task through the port's service ([`super::bridge`]).

use std::future::{Future, poll_fn};
use std::task::Poll;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::io::{AsyncRead, AsyncWrite};

use super::budget::{Budget, CountWrites};
use super::{Port, Watch, bridge, unary};
use crate::tls::TlsAddr;

/// Flow-control windows, frame and header limits, and the send buffer per
/// stream: hyper's HTTP/2 server defaults, which kvd served with before.
const STREAM_WINDOW: u32 = 1 << 20;
const CONN_WINDOW: u32 = 1 << 20;
pub(super) const MAX_FRAME: u32 = 16 << 10;
pub(super) const MAX_HEADER_LIST: u32 = 16 << 10;
const MAX_SEND_BUFFER: usize = 400 << 10;
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// Serves `io` (past its preface check) until the client closes it, or,
/// once `drain` begins, until the streams it had accepted are done.
pub async fn serve<T, P: Port>(io: T, svc: P, peer: Option<ConnectInfo<TlsAddr>>, drain: &Watch)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    P::Future: Send,
{
    let budget = Budget::new(svc.request_budget());
    let io = CountWrites::new(io, budget.clone());
    let handshake = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        // The client port: `--max-concurrent-streams`, unlimited by default
        // as etcd's (Go's math.MaxUint32): a gRPC client at the limit queues
        // new calls behind its open streams, and kube-apiserver keeps many
        // watches open on one connection. Memory is bounded per call
        // instead (`budget.rs`).
        .max_concurrent_streams(svc.max_streams())
        .handshake::<_, Bytes>(io);
    let mut conn = match handshake.await {
        Ok(c) => c,
        Err(e) => return tracing::debug!(error = %e, "HTTP/2 handshake failed"),
    };
    // Writes are answered on this task: they spend little CPU here and
    // mostly wait for their entry to apply, and an apply batch that finishes
    // many of them then wakes this task once instead of one task per call.
    // Everything else runs as its own task, so that reads of one connection
    // use every core.
    let mut writes = FuturesUnordered::new();
    // The drain's signal is polled once, so that it wakes this task; after
    // that each wake-up reads its flag (one atomic load), not the channel
    // every connection shares: this loop is on the write path.
    let mut stopping = Box::pin(drain.stopping());
    let (mut registered, mut going_away) = (false, false);
    let accepted = poll_fn(|cx| {
        loop {
            if !going_away {
                let stop = if registered {
                    drain.is_stopping()
                } else {
                    registered = true;
                    stopping.as_mut().poll(cx).is_ready()
                };
                if stop {
                    // GOAWAY: the client sends no new stream here; those it
                    // had begun are served (h2 refuses later ones, which gRPC
                    // retries).
                    conn.graceful_shutdown();
                    going_away = true;
                }
            }
            while let Poll::Ready(Some(())) = writes.poll_next_unpin(cx) {}
            // Polling for the next stream also writes the replies queued above.
            let (req, respond) = match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok(stream))) => stream,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            };
            let (mut parts, body) = req.into_parts();
            if let Some(p) = &peer {
                parts.extensions.insert(p.clone());
            }
            match svc.direct().and_then(|g| Some((g, unary::takes(&parts)?))) {
                Some((grpc, unary::Kind::Write)) => {
                    writes.push(unary::serve(grpc.clone(), budget.clone(), parts, body, respond))
                }
                Some((grpc, unary::Kind::Read)) => {
                    drop(tokio::spawn(unary::serve(grpc.clone(), budget.clone(), parts, body, respond)))
                }
                None => {
                    let (body, one_reply) = if unary::is_grpc(&parts) {
                        let (one_message, one_reply) = svc.shape(parts.uri.path());
                        (bridge::H2Body::grpc(body, budget.clone(), svc.max_message(), one_message), one_reply)
                    } else {
                        (bridge::H2Body::new(body), true)
                    };
                    let req = Request::from_parts(parts, Body::new(body));
                    tokio::spawn(bridge::serve(svc.clone(), req, respond, budget.clone(), one_reply));
                }
            }
        }
    })
    .await;
    // h2 ends `poll_accept` only once the connection is closed: after a
    // GOAWAY it goes on while streams are open, so the loop above finishes
    // the writes still in flight. Any left now have no connection to answer on.
    if let Err(e) = accepted {
        tracing::debug!(error = %e, "HTTP/2 connection failed");
    }
}
