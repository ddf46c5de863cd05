//! An HTTP/2 stream served by the port's tower service: every call that
//! [`super::unary`] does not take (streaming gRPC such as Watch and
//! LeaseKeepAlive, other services, the HTTP endpoints and the gateway over
//! HTTP/2). It does what hyper's HTTP/2 server does for a stream:
//!
//! - the request's DATA frames become an [`http_body::Body`]; each frame's
//!   flow-control capacity is given back as it is handed on;
//! - the response's frames are written as the peer's window allows, one at
//!   a time, so a slow reader holds up its stream's producer (a Watch
//!   stream's channel fills and its watchers fall behind) instead of
//!   growing a buffer here;
//! - a stream the client resets drops the service's future and its body;
//! - a gRPC request's messages are followed through their 5-byte prefixes:
//!   each message's declared length is reserved against the connection's
//!   budget ([`super::budget`]) before its bytes are handed on, and given
//!   back once its last byte has been (the service decodes it then). A
//!   message the budget cannot hold ends the body with an error instead,
//!   so the service never buffers it; one over gRPC's receive limit the
//!   service itself refuses on its prefix.

use std::convert::Infallible;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{self, HeaderMap, Response};
use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http_body::{Body as _, Frame};
use tower::Service;

use super::super::grpc_frame;
use super::budget::{Budget, Held};
use std::sync::Arc;

/// A request body over an HTTP/2 stream.
pub struct H2Body {
    recv: RecvStream,
    data_done: bool,
    /// For a gRPC request: where its messages start and end.
    grpc: Option<Messages>,
}

impl H2Body {
    pub fn new(recv: RecvStream) -> Self {
        H2Body { recv, data_done: false, grpc: None }
    }

    /// A gRPC request's body, its messages held against `budget` while
    /// they are read, each at most `limit` bytes. With `one`, the method
    /// takes one request message (all but the bidirectional streams): the
    /// body ends after it, as grpc-go reads no further (tonic would read on
    /// to the end of the stream, however long, before it answers).
    pub fn grpc(recv: RecvStream, budget: Arc<Budget>, limit: usize, one: bool) -> Self {
        let grpc = Messages {
            budget,
            limit,
            prefix: [0; grpc_frame::HEADER_LEN],
            have: 0,
            left: 0,
            held: None,
            one,
            done: false,
        };
        H2Body { recv, data_done: false, grpc: Some(grpc) }
    }
}

/// Follows a gRPC body's length-prefixed messages as their bytes go by.
struct Messages {
    budget: Arc<Budget>,
    limit: usize,
    /// The prefix being read, and how much of it is.
    prefix: [u8; grpc_frame::HEADER_LEN],
    have: usize,
    /// Bytes of the current message still to come.
    left: usize,
    held: Option<Held>,
    /// The body ends with its first message.
    one: bool,
    /// That message is complete.
    done: bool,
}

impl Messages {
    /// Accounts for `data`, the next bytes of the body: how many of them to
    /// hand on (all, unless the body ends with a message that ends in
    /// them). Refuses a message the connection's budget cannot hold.
    fn pass(&mut self, data: &[u8]) -> Result<usize, Reason> {
        let mut at = 0;
        while at < data.len() && !self.done {
            if self.left > 0 {
                let n = self.left.min(data.len() - at);
                self.left -= n;
                at += n;
                if self.left == 0 {
                    self.held = None;
                    self.done = self.one;
                }
                continue;
            }
            let n = (grpc_frame::HEADER_LEN - self.have).min(data.len() - at);
            self.prefix[self.have..self.have + n].copy_from_slice(&data[at..at + n]);
            self.have += n;
            at += n;
            if self.have == grpc_frame::HEADER_LEN {
                self.have = 0;
                let Some((_, len)) = grpc_frame::header(&self.prefix) else { continue };
                if len > self.limit {
                    // The service refuses the message on its prefix (with
                    // gRPC's words) and reads no more of it.
                    self.done = true;
                } else if len == 0 {
                    self.done = self.one;
                } else {
                    let n = grpc_frame::HEADER_LEN + len;
                    self.held = Some(self.budget.try_request(n).ok_or(Reason::ENHANCE_YOUR_CALM)?);
                    self.left = len;
                }
            }
        }
        Ok(at)
    }
}

impl http_body::Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if self.grpc.as_ref().is_some_and(|g| g.done) {
            self.data_done = true;
        }
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(mut data)) => {
                    // Handed on (or dropped): the peer may send this much more.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if let Some(grpc) = self.grpc.as_mut() {
                        match grpc.pass(&data) {
                            // Not handed on: the service answers the error,
                            // and the rest of the stream is never read.
                            Err(reason) => {
                                grpc.done = true;
                                self.data_done = true;
                                return Poll::Ready(Some(Err(h2::Error::from(reason))));
                            }
                            Ok(n) => data.truncate(n),
                        }
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.data_done = true,
            }
        }
        if self.grpc.as_ref().is_some_and(|g| g.done) {
            // The body's one message (or a refused one) is all there is.
            return Poll::Ready(None);
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream() || self.grpc.as_ref().is_some_and(|g| g.done)
    }
}

/// Serves one stream through `svc`, until its response is written or the
/// client resets it. A call with one response (all but gRPC's streams)
/// takes one of the connection's slots first, as the unary path's calls
/// do, and holds it until its response is handed to h2.
pub async fn serve<S>(mut svc: S, req: Request, mut respond: SendResponse<Bytes>, budget: Arc<Budget>, one_reply: bool)
where
    S: Service<Request, Response = Response<Body>, Error = Infallible>,
{
    let _slot = if one_reply { Some(budget.slot().await) } else { None };
    let answer = async {
        poll_fn(|cx| svc.poll_ready(cx)).await?;
        svc.call(req).await
    };
    let resp = tokio::select! {
        biased;
        r = answer => match r {
            Ok(resp) => resp,
            Err(never) => match never {},
        },
        _ = poll_fn(|cx| respond.poll_reset(cx)) => return,
    };
    let (mut head, body) = resp.into_parts();
    strip_connection_headers(&mut head.headers);
    let end = body.is_end_stream();
    let send = match respond.send_response(Response::from_parts(head, ()), end) {
        Ok(s) => s,
        Err(e) => return tracing::debug!(error = %e, "HTTP/2 response headers not sent"),
    };
    if !end && let Err(e) = pump(body, send, &budget).await {
        tracing::debug!(error = %e, "HTTP/2 response body ended early");
    }
}

/// Writes `body` to `send` as the peer's window allows.
async fn pump(mut body: Body, mut send: SendStream<Bytes>, budget: &Budget) -> Result<(), h2::Error> {
    loop {
        // Wait for room (any at all: h2 splits a larger frame to the
        // window); a reset ends the wait with an error.
        send.reserve_capacity(1);
        while send.capacity() == 0 {
            match poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(Ok(0)) => {}
                Some(Ok(_)) => break,
                Some(Err(e)) => return Err(e),
                None => return Err(h2::Error::from(Reason::CANCEL)),
            }
        }
        let frame = poll_fn(|cx| {
            if let Poll::Ready(r) = send.poll_reset(cx) {
                return Poll::Ready(Err(r.map_or_else(|e| e, h2::Error::from)));
            }
            Pin::new(&mut body).poll_frame(cx).map(Ok)
        })
        .await?;
        match frame {
            None => return send.send_data(Bytes::new(), true),
            Some(Err(e)) => {
                tracing::debug!(error = %e, "response body failed");
                send.send_reset(Reason::INTERNAL_ERROR);
                return Ok(());
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    let end = body.is_end_stream();
                    budget.queued(data.len());
                    send.send_data(data, end)?;
                    if end {
                        return Ok(());
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        send.reserve_capacity(0);
                        return send.send_trailers(trailers);
                    }
                }
            },
        }
    }
}

/// Headers HTTP/2 forbids (RFC 9113 §8.2.2); h2 refuses a response that has one.
fn strip_connection_headers(h: &mut HeaderMap) {
    for name in [
        http::header::CONNECTION,
        http::header::TRANSFER_ENCODING,
        http::header::UPGRADE,
        http::HeaderName::from_static("keep-alive"),
        http::HeaderName::from_static("proxy-connection"),
    ] {
        h.remove(name);
    }
}
