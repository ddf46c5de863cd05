//! KV's unary calls (Range, Put, DeleteRange, Txn, Compact) served straight
//! from their HTTP/2 stream: the one request message is read from the
//! stream's DATA, decoded and handed to [`super::super::kv::KvService`], and
//! the reply goes out as HEADERS, one DATA frame and the `grpc-status`
//! trailers. Through hyper's HTTP/2 server and tonic, each call also built a
//! request body, a decoding stream with its own buffer, an encoding body
//! with an 8 KiB buffer and a chain of boxed services: under 1,000 clients
//! `perf` put hyper's task per stream at 27% of kvd's CPU, the put itself
//! at 5% (BENCHMARKS.md, session 15).
//!
//! Everything around the call is as on the tonic path ([`super::super::dispatch`]):
//! etcd's admission checks, the call and byte metrics, gRPC's receive limit
//! and its error for an oversized message. A malformed or truncated body
//! gets grpc-go's code and words, as from etcd. A call this path does not
//! take (compressed requests included) goes through tonic.
//!
//! Memory, as grpc-go bounds it and more ([`super::budget`]): only the
//! message the 5-byte prefix declares is read (at most gRPC's receive
//! limit); DATA past it is never read, and once the call is answered the
//! stream is reset with NO_ERROR, as grpc-go does, so the client stops
//! sending. The declared length is reserved against the connection's
//! budget while the message is read and decoded; the call takes one of the
//! connection's slots, and its reply goes out as the client's window allows
//! (h2 buffers at most its send buffer of it), counted in that budget
//! while it waits.

use std::future::{Future, poll_fn};
use std::sync::Arc;
use std::time::Instant;

use axum::http::request::Parts;
use axum::http::{self, HeaderMap, HeaderValue};
use bytes::{Bytes, BytesMut};
use h2::RecvStream;
use h2::server::SendResponse;
use prost::Message;
use tonic::Status;
use tonic::metadata::MetadataMap;

use super::super::dispatch::{Grpc, code_name};
use super::super::grpc_frame;
use super::super::method_metrics::MethodMetrics;
use super::budget::{Budget, Held, Slot};
use crate::metrics;
use kvd_api::etcdserverpb::kv_server::Kv;

/// A call this path serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Range: its work is done in the handler.
    Read,
    /// Put, DeleteRange, Txn, Compact: mostly waits for its entry to apply
    /// (a read-only Txn is served here too; Kubernetes' are small).
    Write,
}

/// Whether this path serves the request (an uncompressed gRPC call of one
/// of KV's unary methods), and as which kind.
pub fn takes(parts: &Parts) -> Option<Kind> {
    let kind = match parts.uri.path() {
        "/etcdserverpb.KV/Range" => Kind::Read,
        "/etcdserverpb.KV/Put"
        | "/etcdserverpb.KV/DeleteRange"
        | "/etcdserverpb.KV/Txn"
        | "/etcdserverpb.KV/Compact" => Kind::Write,
        _ => return None,
    };
    let identity = parts.headers.get("grpc-encoding").is_none_or(|v| v.as_bytes() == b"identity");
    (is_grpc(parts) && identity).then_some(kind)
}

/// Whether the request is a gRPC call (a POST of `application/grpc*`).
pub fn is_grpc(parts: &Parts) -> bool {
    parts.method == http::Method::POST
        && parts.headers.get(http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Serves one call (which [`takes`] accepted) until its reply is sent or
/// the client resets the stream.
pub async fn serve(
    grpc: Grpc,
    budget: Arc<Budget>,
    parts: Parts,
    mut body: RecvStream,
    mut respond: SendResponse<Bytes>,
) {
    let reply = tokio::select! {
        biased;
        r = admit_and_call(&grpc, &budget, parts, &mut body) => r,
        // The client gave up: the call's future is dropped, as hyper does.
        _ = poll_fn(|cx| respond.poll_reset(cx)) => return,
    };
    let sent = match reply {
        Ok((metadata, frame, slot)) => send_ok(&mut respond, metadata, frame, &budget, slot).await,
        Err(status) => {
            let (head, ()) = status.into_http::<()>().into_parts();
            respond.send_response(http::Response::from_parts(head, ()), true).map(drop)
        }
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "gRPC reply not sent");
    }
    // The request side was kept to here, unread past the message, so that a
    // client that ends its stream in a frame of its own (tonic's does) has
    // done so by now. Dropping the stream's handles with the client's side
    // still open (it sent more than its message) makes h2 reset the stream
    // with NO_ERROR after the reply, as grpc-go does.
    drop(body);
}

/// The reply: HEADERS with the metadata, the message as the client's window
/// allows, `grpc-status: 0`. The call's slot is held until the message is out.
async fn send_ok(
    respond: &mut SendResponse<Bytes>,
    metadata: MetadataMap,
    mut frame: Bytes,
    budget: &Arc<Budget>,
    _slot: Slot,
) -> Result<(), h2::Error> {
    let mut head = http::Response::new(());
    *head.headers_mut() = metadata.into_headers();
    head.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    metrics::get().client_grpc_sent_bytes.inc_by(frame.len() as u64);
    let mut send = respond.send_response(head, false)?;
    let mut waiting: Option<Held> = None;
    while !frame.is_empty() {
        // Usually the window has room and this is one DATA frame at once.
        // (h2 takes a u32: a reply over 2 GiB goes in several turns.)
        send.reserve_capacity(frame.len().min(1 << 31));
        while send.capacity() == 0 {
            // Counted in the connection's budget while it waits.
            waiting.get_or_insert_with(|| budget.reply(frame.len()));
            match poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Err(h2::Error::from(h2::Reason::CANCEL)),
            }
        }
        let part = frame.split_to(send.capacity().min(frame.len()));
        if let Some(h) = waiting.as_mut() {
            h.release(part.len());
        }
        budget.queued(part.len());
        send.send_data(part, false)?;
    }
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    send.send_trailers(trailers)
}

/// etcd's checks, then the call with its metrics. A call the checks refuse
/// is not counted, as etcd's interceptor refuses it before go-grpc-prometheus's.
async fn admit_and_call(
    grpc: &Grpc,
    budget: &Arc<Budget>,
    parts: Parts,
    body: &mut RecvStream,
) -> Result<(MetadataMap, Bytes, Slot), Status> {
    grpc.admit(&parts.headers, parts.uri.path()).await?;
    let calls = MethodMetrics::for_path(parts.uri.path());
    if let Some(c) = &calls {
        c.started();
    }
    let start = Instant::now();
    let reply = call(grpc, budget, parts, body).await;
    if let Some(c) = calls {
        let code = reply.as_ref().err().map_or(tonic::Code::Ok, |s| s.code());
        c.handled(code_name(code as i32), start.elapsed().as_secs_f64());
    }
    reply
}

/// The request message, a call slot, the KV method.
async fn call(
    grpc: &Grpc,
    budget: &Arc<Budget>,
    parts: Parts,
    body: &mut RecvStream,
) -> Result<(MetadataMap, Bytes, Slot), Status> {
    let msg = read_message(body, grpc.max_request_message(), budget).await?;
    let slot = budget.slot().await;
    let kv = grpc.kv();
    let (metadata, frame) = match parts.uri.path() {
        "/etcdserverpb.KV/Range" => run(parts, msg, |r| kv.range(r)).await,
        "/etcdserverpb.KV/Put" => run(parts, msg, |r| kv.put(r)).await,
        "/etcdserverpb.KV/DeleteRange" => run(parts, msg, |r| kv.delete_range(r)).await,
        "/etcdserverpb.KV/Txn" => run(parts, msg, |r| kv.txn(r)).await,
        "/etcdserverpb.KV/Compact" => run(parts, msg, |r| kv.compact(r)).await,
        other => Err(Status::unimplemented(format!("unknown method {other}"))),
    }?;
    Ok((metadata, frame, slot))
}

/// Decodes the request (its bytes then leave the connection's budget),
/// runs `method`, frames its reply.
async fn run<Req, Resp, F>(
    parts: Parts,
    (msg, held): (Bytes, Held),
    method: impl FnOnce(tonic::Request<Req>) -> F,
) -> Result<(MetadataMap, Bytes), Status>
where
    Req: Message + Default,
    Resp: Message,
    F: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    // As grpc-go words it, and etcd's answer to a txn nested too deeply.
    let req = Req::decode(msg)
        .map_err(|e| kvd_api::codec::as_etcd(Status::internal(format!("grpc: error unmarshalling request: {e}"))))?;
    drop(held);
    let (metadata, reply, _) =
        method(tonic::Request::from_http(http::Request::from_parts(parts, req))).await?.into_parts();
    let mut out = BytesMut::with_capacity(grpc_frame::HEADER_LEN + reply.encoded_len());
    grpc_frame::put(&mut out, &reply);
    Ok((metadata, out.freeze()))
}

/// The one message of a unary call's body, without its 5-byte prefix, and
/// its reservation in the connection's budget. Reads no further than the
/// message the prefix declares.
async fn read_message(body: &mut RecvStream, limit: usize, budget: &Arc<Budget>) -> Result<(Bytes, Held), Status> {
    let received = &metrics::get().client_grpc_received_bytes;
    let mut first = Bytes::new();
    let mut joined = BytesMut::new();
    // The declared message's length with its prefix, and its reservation.
    let mut declared: Option<(usize, Held)> = None;
    loop {
        let have = if joined.is_empty() { first.len() } else { joined.len() };
        if declared.as_ref().is_some_and(|(want, _)| have >= *want) {
            break;
        }
        let Some(chunk) = body.data().await else { break };
        let mut chunk = chunk.map_err(|e| Status::cancelled(e.to_string()))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        received.inc_by(chunk.len() as u64);
        if let Some((want, _)) = &declared {
            // Nothing past the declared message is kept.
            chunk.truncate(want - have);
        }
        // Usually the whole message is one DATA frame: keep it without a copy.
        if first.is_empty() && joined.is_empty() {
            first = chunk;
        } else {
            if joined.is_empty() {
                joined.extend_from_slice(&first);
            }
            joined.extend_from_slice(&chunk);
        }
        if declared.is_none() {
            let all: &[u8] = if joined.is_empty() { &first } else { &joined };
            let Some((_, len)) = grpc_frame::header(all) else { continue };
            if len > limit {
                // As Go's gRPC (and so etcd) words it.
                return Err(Status::resource_exhausted(format!(
                    "grpc: received message larger than max ({len} vs. {limit})"
                )));
            }
            let want = grpc_frame::HEADER_LEN + len;
            let held = budget.try_request(want).ok_or_else(|| {
                Status::resource_exhausted(format!(
                    "kvd: this connection's calls hold {} bytes of request messages, over its {} (retry, or spread the calls over connections)",
                    budget.request_bytes(),
                    budget.request_limit()
                ))
            })?;
            // The first DATA frame may run past the message.
            first.truncate(want);
            joined.truncate(want);
            declared = Some((want, held));
        }
    }
    let all = if joined.is_empty() { first } else { joined.freeze() };
    // As grpc-go (and so etcd) answers each (tests/grpc_wire.rs compares).
    let Some((want, held)) = declared else {
        return Err(Status::unknown(if all.is_empty() { "EOF" } else { "unexpected EOF" }));
    };
    match grpc_frame::header(&all) {
        Some((true, _)) => Err(Status::internal("grpc: compressed flag set with identity or empty encoding")),
        _ if all.len() < want => Err(Status::unknown("unexpected EOF")),
        _ => Ok((all.slice(grpc_frame::HEADER_LEN..want), held)),
    }
}
