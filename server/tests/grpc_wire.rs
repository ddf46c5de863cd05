//! The client port at the level of HTTP/2 frames, where kvd serves KV's
//! unary calls without tonic (`rpc/conn/unary.rs`): malformed, truncated,
//! compressed and split request bodies get the same status codes as the
//! real etcd, a call the client resets leaves the server serving, other
//! requests over HTTP/2 reach the HTTP endpoints, and the calls are counted
//! in `/metrics` exactly.

mod common;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::Proc;
use h2::client::SendRequest;
use kvd_api::etcdserverpb::{PutRequest, PutResponse, RangeRequest};
use prost::Message;
use tonic::codegen::http::{Method, Request};

/// An HTTP/2 connection to `p`'s client port, without TLS.
async fn connect(p: &Proc) -> SendRequest<Bytes> {
    let addr = p.endpoint.trim_start_matches("http://").to_string();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send.ready().await.unwrap()
}

/// The HEADERS of a gRPC call of `path`.
fn grpc_request(p: &Proc, path: &str) -> Request<()> {
    Request::builder()
        .method(Method::POST)
        .uri(format!("{}{path}", p.endpoint))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// One gRPC call whose body is `frames`, sent as separate DATA frames:
/// (status code's name, message, reply body).
async fn call(p: &Proc, path: &str, frames: &[Bytes]) -> (String, String, Bytes) {
    let mut send = connect(p).await;
    let (reply, mut body) = send.send_request(grpc_request(p, path), frames.is_empty()).unwrap();
    for (i, f) in frames.iter().enumerate() {
        body.send_data(f.clone(), i + 1 == frames.len()).unwrap();
    }
    let reply = reply.await.unwrap();
    assert_eq!(reply.status(), 200);
    let (head, mut recv) = reply.into_parts();
    let mut data = BytesMut::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.unwrap();
        let _ = recv.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    // A trailers-only reply carries its status in the headers.
    let trailers = recv.trailers().await.unwrap().unwrap_or(head.headers);
    let code: i32 = trailers["grpc-status"].to_str().unwrap().parse().unwrap();
    let msg = trailers.get("grpc-message").map(|v| v.to_str().unwrap()).unwrap_or_default();
    let msg = percent_encoding::percent_decode_str(msg).decode_utf8_lossy().into_owned();
    (format!("{:?}", tonic::Code::from_i32(code)), msg, data.freeze())
}

/// `m` as one gRPC frame.
fn framed(m: &impl Message) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(0);
    b.put_u32(m.encoded_len() as u32);
    m.encode(&mut b).unwrap();
    b.freeze()
}

/// A message without the decoder's own words (Go's and prost's differ).
fn gist(msg: &str) -> &str {
    msg.split_once("unmarshalling request: ").map_or(msg, |(gist, _)| gist)
}

fn put(key: &str, value: &[u8]) -> PutRequest {
    PutRequest { key: key.as_bytes().to_vec(), value: value.to_vec(), ..Default::default() }
}

async fn value_of(p: &Proc, key: &str) -> Option<Vec<u8>> {
    let r = p.kv().await.range(RangeRequest { key: key.as_bytes().to_vec(), ..Default::default() }).await.unwrap();
    r.into_inner().kvs.first().map(|kv| kv.value.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_get_etcds_status_codes_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (kvd, etcd) = common::kvd_and_etcd(dir.path(), &[]).await;
    let good = framed(&put("wire", b"v"));
    let mut compressed_flag = BytesMut::from(&good[..]);
    compressed_flag[0] = 1;
    let cases: Vec<(&str, Vec<Bytes>)> = vec![
        ("no message", vec![]),
        ("an empty DATA frame", vec![Bytes::new()]),
        ("half a prefix", vec![good.slice(..3)]),
        ("a message cut short", vec![good.slice(..good.len() - 1)]),
        ("bytes that are not a PutRequest", vec![Bytes::from_static(&[0, 0, 0, 0, 3, 0xff, 0xff, 0xff])]),
        ("the compressed flag without grpc-encoding", vec![compressed_flag.freeze()]),
    ];
    let mut differ = Vec::new();
    for (what, frames) in &cases {
        let k = call(&kvd, "/etcdserverpb.KV/Put", frames).await;
        let e = tokio::time::timeout(Duration::from_secs(3), call(&etcd, "/etcdserverpb.KV/Put", frames)).await;
        eprintln!("{what}: kvd {:?}, etcd {:?}", (&k.0, &k.1), e.as_ref().map(|e| (&e.0, &e.1)));
        match e {
            Ok(e) => differ
                .extend((k.0 != e.0 || gist(&k.1) != gist(&e.1)).then(|| format!("{what}: kvd {k:?}, etcd {e:?}"))),
            // etcd 3.6 leaves a call without a message unanswered; kvd
            // answers it as etcd answers an empty DATA frame.
            Err(_) => assert_eq!((k.0.as_str(), k.1.as_str()), ("Unknown", "EOF"), "{what}"),
        }
        assert_ne!(k.0, "Ok", "{what}");
    }
    assert!(differ.is_empty(), "{differ:#?}");
    assert_eq!(value_of(&kvd, "wire").await, None, "a refused call wrote");
    // The same message split over DATA frames, the first cutting its prefix
    // in two, is served. (A few thousand tiny frames would be refused by h2,
    // kvd's HTTP/2, as a flood.)
    let value = vec![b'x'; 40_000];
    let whole = framed(&put("wire", &value));
    let mut pieces = vec![whole.slice(..3)];
    pieces.extend((3..whole.len()).step_by(1000).map(|i| whole.slice(i..(i + 1000).min(whole.len()))));
    for p in [&kvd, &etcd] {
        let (code, msg, body) = call(p, "/etcdserverpb.KV/Put", &pieces).await;
        assert_eq!((code.as_str(), msg.as_str()), ("Ok", ""));
        assert!(PutResponse::decode(&body[5..]).unwrap().header.unwrap().revision > 1);
        assert_eq!(value_of(p, "wire").await.as_deref(), Some(&value[..]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_reset_by_the_client_leave_the_server_serving() {
    let dir = tempfile::tempdir().unwrap();
    let kvd = Proc::kvd_ready(&dir.path().join("kvd"), &[]).await;
    let mut send = connect(&kvd).await;
    let mut streams = Vec::new();
    // (h2 ends a connection that resets streams faster than it accepts
    // them: CVE-2023-44487's rapid reset.)
    for i in 0..10 {
        let (reply, mut body) = send.send_request(grpc_request(&kvd, "/etcdserverpb.KV/Put"), false).unwrap();
        // Half are reset before their message, half right after it.
        if i % 2 == 1 {
            body.send_data(framed(&put(&format!("reset/{i}"), b"v")), false).unwrap();
        }
        body.send_reset(h2::Reason::CANCEL);
        streams.push(reply);
    }
    drop(streams);
    // The same connection and a new one still serve.
    let (reply, mut body) = send.send_request(grpc_request(&kvd, "/etcdserverpb.KV/Put"), false).unwrap();
    body.send_data(framed(&put("after", b"reset")), true).unwrap();
    assert_eq!(reply.await.unwrap().status(), 200);
    let (code, _, _) = call(&kvd, "/etcdserverpb.KV/Put", &[framed(&put("after2", b"v"))]).await;
    assert_eq!(code, "Ok");
    assert_eq!(value_of(&kvd, "after2").await.as_deref(), Some(&b"v"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoints_answer_over_http2_too() {
    let dir = tempfile::tempdir().unwrap();
    let kvd = Proc::kvd_ready(&dir.path().join("kvd"), &[]).await;
    for (path, want) in [("/health", "\"health\":\"true\""), ("/metrics", "etcd_server_has_leader 1")] {
        let mut send = connect(&kvd).await;
        let req = Request::builder().uri(format!("{}{path}", kvd.endpoint)).body(()).unwrap();
        let (reply, _) = send.send_request(req, true).unwrap();
        let reply = reply.await.unwrap();
        assert_eq!(reply.status(), 200, "{path}");
        let mut recv = reply.into_body();
        let mut text = Vec::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.unwrap();
            let _ = recv.flow_control().release_capacity(chunk.len());
            text.extend_from_slice(&chunk);
        }
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains(want), "{path}: {text}");
    }
}

/// A counter's value in `/metrics` text (0 when absent).
fn counter(text: &str, name_and_labels: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_and_their_bytes_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let kvd = Proc::kvd_ready(&dir.path().join("kvd"), &[]).await;
    let started = r#"grpc_server_started_total{grpc_type="unary",grpc_service="etcdserverpb.KV",grpc_method="Put"}"#;
    let ok = r#"grpc_server_handled_total{grpc_type="unary",grpc_service="etcdserverpb.KV",grpc_method="Put",grpc_code="OK"}"#;
    let refused = r#"grpc_server_handled_total{grpc_type="unary",grpc_service="etcdserverpb.KV",grpc_method="Put",grpc_code="InvalidArgument"}"#;
    let received = "etcd_network_client_grpc_received_bytes_total";
    let sent = "etcd_network_client_grpc_sent_bytes_total";
    let before = kvd.metrics().await;
    let (mut n_in, mut n_out) = (0, 0);
    for i in 0..5 {
        let req = framed(&put(&format!("counted/{i}"), &vec![b'c'; 100 * i]));
        n_in += req.len();
        let (code, _, body) = call(&kvd, "/etcdserverpb.KV/Put", &[req]).await;
        assert_eq!(code, "Ok");
        n_out += body.len();
    }
    // An empty key is refused (and its request bytes still count).
    let req = framed(&put("", b"v"));
    n_in += req.len();
    let (code, msg, _) = call(&kvd, "/etcdserverpb.KV/Put", &[req]).await;
    assert_eq!((code.as_str(), msg.as_str()), ("InvalidArgument", "etcdserver: key is not provided"));
    let after = kvd.metrics().await;
    let delta = |name: &str| counter(&after, name) - counter(&before, name);
    assert_eq!(delta(started), 6.0);
    assert_eq!(delta(ok), 5.0);
    assert_eq!(delta(refused), 1.0);
    assert_eq!(delta(received), n_in as f64);
    assert_eq!(delta(sent), n_out as f64);
}
