//! Unary gRPC calls made straight on HTTP/2 streams (the `h2` crate), for
//! the request/reply workloads (put, range, txn-put, txn-mixed).
//!
//! Through tonic's generated client and hyper's connection, each call went
//! to the connection task over hyper's dispatch channel, and its body was
//! polled into DATA frames there. Here the calling task opens the stream and
//! queues the one DATA frame (END_STREAM) itself. At 100 clients over 10
//! connections (`perf stat` of the load generator, 2 runs each): 13-16 →
//! 9-10 µs of CPU per put, 0.62 → 0.51 `sendto` per put. The streaming
//! workloads (watch, lease keep-alive) still use tonic's clients over
//! [`super::Conn`].
//!
//! A reply is checked as a gRPC client checks it: HTTP status 200, then
//! `grpc-status` from the trailers (or from the headers of a trailers-only
//! reply), then one uncompressed length-prefixed message that must decode
//! as the expected type.

use bytes::{Buf, Bytes, BytesMut};
use h2::client::SendRequest;
use kvd::rpc::grpc_frame;
use prost::Message;
use tonic::Status;
use tonic::codegen::http::uri::{Authority, PathAndQuery, Scheme};
use tonic::codegen::http::{HeaderValue, Method, Request, StatusCode, Uri, header};

use super::conn::dial;
use super::{BoxError, Common, connection_urls};

/// Flow-control windows, as hyper's HTTP/2 client sets them: replies of a
/// range workload can be large, and a small window would cost a
/// WINDOW_UPDATE round trip every 64 KiB.
const STREAM_WINDOW: u32 = 2 << 20;
const CONN_WINDOW: u32 = 5 << 20;

/// One HTTP/2 connection for unary calls; clones share it.
#[derive(Clone)]
pub(crate) struct UnaryConn {
    send: SendRequest<Bytes>,
    authority: Authority,
}

/// `--conns` connections for unary calls, spread over the endpoints (or all
/// to the leader).
pub(crate) async fn unary_connections(c: &Common) -> Result<Vec<UnaryConn>, String> {
    let mut conns = Vec::new();
    for url in connection_urls(c).await? {
        conns.push(UnaryConn::connect(&url).await.map_err(|e| format!("{url}: {e}"))?);
    }
    Ok(conns)
}

impl UnaryConn {
    async fn connect(url: &str) -> Result<Self, BoxError> {
        let (io, authority) = dial(url).await?;
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONN_WINDOW)
            .handshake::<_, Bytes>(io)
            .await?;
        tokio::spawn(async move {
            // A broken connection fails the calls on it, which report it.
            let _ = connection.await;
        });
        Ok(Self { send, authority })
    }

    /// The URI of `path` ("/etcdserverpb.KV/Put") on this connection.
    pub(crate) fn method(&self, path: &'static str) -> Uri {
        Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(PathAndQuery::from_static(path))
            .build()
            .expect("a static path and a parsed authority make a URI")
    }

    /// Sends `req` to `method` and returns the decoded reply.
    pub(crate) async fn call<Q: Message, R: Message + Default>(&self, method: &Uri, req: &Q) -> Result<R, Status> {
        let mut send = self.send.clone().ready().await.map_err(h2_status)?;
        let mut head = Request::new(());
        *head.method_mut() = Method::POST;
        *head.uri_mut() = method.clone();
        let h = head.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        let (reply, mut body) = send.send_request(head, false).map_err(h2_status)?;
        body.send_data(frame(req), true).map_err(h2_status)?;

        let (parts, mut data) = reply.await.map_err(h2_status)?.into_parts();
        if parts.status != StatusCode::OK {
            return Err(Status::unknown(format!("HTTP status {} instead of 200", parts.status)));
        }
        if let Some(st) = Status::from_header_map(&parts.headers) {
            // A trailers-only reply: the status is in the headers.
            return if st.code() == tonic::Code::Ok { Err(Status::internal("no reply message")) } else { Err(st) };
        }
        // Most replies are one DATA frame, kept as it came; a longer one
        // grows in one buffer (a unique `Bytes` turns into `BytesMut` without
        // a copy).
        let mut msg = Bytes::new();
        while let Some(chunk) = data.data().await {
            let chunk = chunk.map_err(h2_status)?;
            let _ = data.flow_control().release_capacity(chunk.len());
            msg = if msg.is_empty() {
                chunk
            } else {
                let mut all = BytesMut::from(msg);
                all.extend_from_slice(&chunk);
                all.freeze()
            };
        }
        let trailers = data.trailers().await.map_err(h2_status)?.unwrap_or_default();
        match Status::from_header_map(&trailers) {
            Some(st) if st.code() == tonic::Code::Ok => {}
            Some(st) => return Err(st),
            None => return Err(Status::internal("reply without grpc-status")),
        }
        unframe(msg)
    }
}

/// `m` as one gRPC frame.
fn frame(m: &impl Message) -> Bytes {
    let mut b = BytesMut::new();
    grpc_frame::put(&mut b, m);
    b.freeze()
}

/// The one message of a reply body.
fn unframe<R: Message + Default>(mut b: Bytes) -> Result<R, Status> {
    let Some((compressed, len)) = grpc_frame::header(&b) else {
        return Err(Status::internal(format!("reply body of {} bytes has no message frame", b.len())));
    };
    if compressed {
        return Err(Status::internal("compressed reply, but none was asked for"));
    }
    b.advance(grpc_frame::HEADER_LEN);
    if b.len() != len {
        return Err(Status::internal(format!("reply frame says {len} bytes, body has {}", b.len())));
    }
    R::decode(b).map_err(|e| Status::internal(format!("reply does not decode: {e}")))
}

/// An HTTP/2 failure as the gRPC status tonic's client would report.
fn h2_status(e: h2::Error) -> Status {
    Status::from_error(Box::new(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvd_api::etcdserverpb::{PutRequest, PutResponse, ResponseHeader};

    #[test]
    fn a_framed_message_unframes_to_itself() {
        let r = PutResponse { header: Some(ResponseHeader { revision: 7, ..Default::default() }), prev_kv: None };
        let f = frame(&r);
        assert_eq!((f[0], &f[1..5]), (0, &(r.encoded_len() as u32).to_be_bytes()[..]));
        assert_eq!(unframe::<PutResponse>(f).unwrap(), r);
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        let good = frame(&PutRequest { key: b"k".to_vec(), ..Default::default() });
        let short = good.slice(..good.len() - 1);
        let mut compressed = BytesMut::from(&good[..]);
        compressed[0] = 1;
        for (b, why) in [
            (Bytes::from_static(&[0, 0]), "no message frame"),
            (short, "frame says"),
            (compressed.freeze(), "compressed"),
            (Bytes::from_static(&[0, 0, 0, 0, 2, 0xff, 0xff]), "does not decode"),
        ] {
            let e = unframe::<PutRequest>(b).unwrap_err();
            assert!(e.message().contains(why), "{why}: {e:?}");
        }
    }
}
