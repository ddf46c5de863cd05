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

use std::future::{Future, poll_fn};
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
    let h = &parts.headers;
    let grpc = parts.method == http::Method::POST
        && h.get(http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
        && h.get("grpc-encoding").is_none_or(|v| v.as_bytes() == b"identity");
    grpc.then_some(kind)
}

/// Serves one call (which [`takes`] accepted) until its reply is queued or
/// the client resets the stream.
pub async fn serve(grpc: Grpc, parts: Parts, body: RecvStream, mut respond: SendResponse<Bytes>) {
    let reply = tokio::select! {
        biased;
        r = admit_and_call(&grpc, parts, body) => r,
        // The client gave up: the call's future is dropped, as hyper does.
        _ = poll_fn(|cx| respond.poll_reset(cx)) => return,
    };
    let sent = match reply {
        Ok((metadata, frame)) => send_ok(&mut respond, metadata, frame),
        Err(status) => {
            let (head, ()) = status.into_http::<()>().into_parts();
            respond.send_response(http::Response::from_parts(head, ()), true).map(drop)
        }
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "gRPC reply not sent");
    }
}

/// The reply: HEADERS with the metadata, the message, `grpc-status: 0`.
fn send_ok(respond: &mut SendResponse<Bytes>, metadata: MetadataMap, frame: Bytes) -> Result<(), h2::Error> {
    let mut head = http::Response::new(());
    *head.headers_mut() = metadata.into_headers();
    head.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    metrics::get().client_grpc_sent_bytes.inc_by(frame.len() as u64);
    let mut send = respond.send_response(head, false)?;
    send.send_data(frame, false)?;
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    send.send_trailers(trailers)
}

/// etcd's checks, then the call with its metrics. A call the checks refuse
/// is not counted, as etcd's interceptor refuses it before go-grpc-prometheus's.
async fn admit_and_call(grpc: &Grpc, parts: Parts, body: RecvStream) -> Result<(MetadataMap, Bytes), Status> {
    grpc.admit(&parts.headers, parts.uri.path()).await?;
    let calls = MethodMetrics::for_path(parts.uri.path());
    if let Some(c) = &calls {
        c.started();
    }
    let start = Instant::now();
    let reply = call(grpc, parts, body).await;
    if let Some(c) = calls {
        let code = reply.as_ref().err().map_or(tonic::Code::Ok, |s| s.code());
        c.handled(code_name(code as i32), start.elapsed().as_secs_f64());
    }
    reply
}

/// The request message, the KV method.
async fn call(grpc: &Grpc, parts: Parts, body: RecvStream) -> Result<(MetadataMap, Bytes), Status> {
    let msg = read_message(body, grpc.max_request_message()).await?;
    let kv = grpc.kv();
    match parts.uri.path() {
        "/etcdserverpb.KV/Range" => run(parts, msg, |r| kv.range(r)).await,
        "/etcdserverpb.KV/Put" => run(parts, msg, |r| kv.put(r)).await,
        "/etcdserverpb.KV/DeleteRange" => run(parts, msg, |r| kv.delete_range(r)).await,
        "/etcdserverpb.KV/Txn" => run(parts, msg, |r| kv.txn(r)).await,
        "/etcdserverpb.KV/Compact" => run(parts, msg, |r| kv.compact(r)).await,
        other => Err(Status::unimplemented(format!("unknown method {other}"))),
    }
}

/// Decodes the request, runs `method`, frames its reply.
async fn run<Req, Resp, F>(
    parts: Parts,
    msg: Bytes,
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
    let (metadata, reply, _) =
        method(tonic::Request::from_http(http::Request::from_parts(parts, req))).await?.into_parts();
    let mut out = BytesMut::with_capacity(grpc_frame::HEADER_LEN + reply.encoded_len());
    grpc_frame::put(&mut out, &reply);
    Ok((metadata, out.freeze()))
}

/// The one message of a unary call's body, without its 5-byte prefix.
async fn read_message(mut body: RecvStream, limit: usize) -> Result<Bytes, Status> {
    let received = &metrics::get().client_grpc_received_bytes;
    let mut first = Bytes::new();
    let mut joined = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| Status::cancelled(e.to_string()))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        received.inc_by(chunk.len() as u64);
        // Usually the whole message is one DATA frame: keep it without a copy.
        if first.is_empty() && joined.is_empty() {
            first = chunk;
        } else {
            if joined.is_empty() {
                joined.extend_from_slice(&first);
            }
            joined.extend_from_slice(&chunk);
        }
        let all: &[u8] = if joined.is_empty() { &first } else { &joined };
        if let Some((_, len)) = grpc_frame::header(all)
            && len > limit
        {
            // As Go's gRPC (and so etcd) words it.
            return Err(Status::resource_exhausted(format!(
                "grpc: received message larger than max ({len} vs. {limit})"
            )));
        }
    }
    let all = if joined.is_empty() { first } else { joined.freeze() };
    // As grpc-go (and so etcd) answers each (tests/grpc_wire.rs compares).
    match grpc_frame::header(&all) {
        None if all.is_empty() => Err(Status::unknown("EOF")),
        None => Err(Status::unknown("unexpected EOF")),
        Some((true, _)) => Err(Status::internal("grpc: compressed flag set with identity or empty encoding")),
        Some((false, len)) if all.len() < grpc_frame::HEADER_LEN + len => Err(Status::unknown("unexpected EOF")),
        Some((false, len)) => Ok(all.slice(grpc_frame::HEADER_LEN..grpc_frame::HEADER_LEN + len)),
    }
}
