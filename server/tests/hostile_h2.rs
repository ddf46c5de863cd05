//! Hostile clients on the client port, with kvd's memory measured while
//! they try (issue 23, item 2): a unary call that declares a small message
//! and then streams hundreds of megabytes; a thousand streams on one
//! connection, each declaring a large message and sending half of it; a
//! client whose flow-control window stays at zero while it asks for large
//! replies; a slow-loris stream; a gateway request whose JSON body never
//! ends; and, on the peer port, a raft call that streams past its message
//! and a thousand half-sent large messages; header blocks on connections
//! whose `:authority` kvd mends that would decode to 64 MB each. kvd's
//! resident memory must stay within its per-connection
//! budgets (`rpc/conn/budget.rs`), and other clients must be served all
//! along.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use common::Proc;
use h2::client::SendRequest;
use kvd_api::etcdserverpb::{LeaseGrantRequest, PutRequest, RangeRequest};
use prost::Message;
use tonic::codegen::http::{Method, Request};

const MIB: u64 = 1 << 20;

/// The process's resident memory in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Samples `p`'s resident memory every 20 ms until dropped; `peak` is the
/// highest seen.
struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
}

impl Sampler {
    fn start(p: &Proc) -> Sampler {
        let pid = p.child.as_ref().unwrap().id();
        let (stop, peak) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(rss(pid))));
        let (s, k) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                k.fetch_max(rss(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Sampler { stop, peak }
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn connect_with(p: &Proc, builder: h2::client::Builder) -> SendRequest<Bytes> {
    let addr = p.endpoint.trim_start_matches("http://").to_string();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (send, conn) = builder.handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send.ready().await.unwrap()
}

fn grpc_request(p: &Proc, path: &str) -> Request<()> {
    Request::builder()
        .method(Method::POST)
        .uri(format!("{}{path}", p.endpoint))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// A gRPC prefix declaring a message of `len` bytes.
fn prefix(len: usize) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(0);
    b.put_u32(len as u32);
    b.freeze()
}

fn framed(m: &impl Message) -> Bytes {
    let mut b = BytesMut::from(&prefix(m.encoded_len())[..]);
    m.encode(&mut b).unwrap();
    b.freeze()
}

/// A Put and a serializable Range on a connection of their own, each
/// answered within 5 s: other clients are served.
async fn others_are_served(p: &Proc, what: &str) {
    let mut kv = p.kv().await;
    let put = PutRequest { key: b"bystander".to_vec(), value: what.as_bytes().to_vec(), ..Default::default() };
    let r = tokio::time::timeout(Duration::from_secs(5), kv.put(put)).await;
    assert!(matches!(r, Ok(Ok(_))), "a bystander's put during {what}: {r:?}");
    let get = RangeRequest { key: b"bystander".to_vec(), serializable: true, ..Default::default() };
    let r = tokio::time::timeout(Duration::from_secs(5), kv.range(get)).await;
    assert!(matches!(r, Ok(Ok(_))), "a bystander's range during {what}: {r:?}");
}

/// A kvd in `dir`, served once (warm-up), with its resident memory then
/// and a [`Sampler`] of it from then on.
async fn measured_kvd(dir: &std::path::Path) -> (Proc, u64, Sampler) {
    let kvd = Proc::kvd_ready(&dir.join("kvd"), &[]).await;
    others_are_served(&kvd, "warm-up").await;
    let base = rss(kvd.child.as_ref().unwrap().id());
    let sampler = Sampler::start(&kvd);
    (kvd, base, sampler)
}

/// The gRPC status of a reply (from its trailers, or its headers when
/// trailers-only), reading and dropping any message.
async fn status_of(reply: h2::client::ResponseFuture) -> Option<String> {
    let reply = match reply.await {
        Ok(r) => r,
        Err(e) => return Some(format!("error: {e}")),
    };
    let (head, mut body) = reply.into_parts();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.ok().flatten().unwrap_or(head.headers);
    Some(trailers.get("grpc-status")?.to_str().ok()?.to_string())
}

/// Streams `chunk` after `first` on `body` until `total` bytes went or the
/// server stops the stream; returns the bytes sent.
async fn stream_until_stopped(mut body: h2::SendStream<Bytes>, first: Bytes, chunk: Bytes, total: u64) -> u64 {
    let mut sent = 0u64;
    if body.send_data(first, false).is_err() {
        return 0;
    }
    while sent < total {
        body.reserve_capacity(chunk.len());
        match std::future::poll_fn(|cx| body.poll_capacity(cx)).await {
            Some(Ok(n)) if n > 0 => {
                let part = chunk.slice(..n.min(chunk.len()));
                sent += part.len() as u64;
                if body.send_data(part, false).is_err() {
                    break;
                }
            }
            Some(Ok(_)) => {}
            _ => break,
        }
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_past_its_declared_message_is_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let (kvd, base, sampler) = measured_kvd(dir.path()).await;
    let chunk = Bytes::from(vec![0x5au8; 1 << 20]);
    let total = 512 * MIB;
    // KV's unary path, and a call through the bridge to tonic.
    let put = framed(&PutRequest { key: b"abcdefgh".to_vec(), ..Default::default() });
    let grant = framed(&LeaseGrantRequest { ttl: 60, id: 0 });
    for (path, first) in [("/etcdserverpb.KV/Put", put), ("/etcdserverpb.Lease/LeaseGrant", grant)] {
        let mut send = connect_with(&kvd, h2::client::Builder::new()).await;
        let (reply, body) = send.send_request(grpc_request(&kvd, path), false).unwrap();
        let pusher = tokio::spawn(stream_until_stopped(body, first, chunk.clone(), total));
        let status = tokio::time::timeout(Duration::from_secs(20), status_of(reply)).await.expect("an answer");
        assert_eq!(status.as_deref(), Some("0"), "{path} answered from its declared message");
        let sent = tokio::time::timeout(Duration::from_secs(20), pusher).await.expect("the stream is stopped").unwrap();
        others_are_served(&kvd, path).await;
        eprintln!("{path}: the client got {} MiB out before the server stopped the stream", sent / MIB);
        assert!(sent < total, "{path}: the server read all {} MiB", total / MIB);
    }
    let grew = sampler.peak().saturating_sub(base);
    eprintln!("RSS {} MiB before, peak {} MiB", base / MIB, sampler.peak() / MIB);
    assert!(grew < 64 * MIB, "kvd's memory grew by {} MiB", grew / MIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_half_sent_large_messages_on_one_connection_stay_within_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let (kvd, base, sampler) = measured_kvd(dir.path()).await;
    let mut send = connect_with(&kvd, h2::client::Builder::new()).await;
    // Each declares a 1.5 MiB message (under the 2 MiB receive limit) and
    // sends 512 KiB of it: 500 MiB held if the server kept every one.
    let half = Bytes::from(vec![0x5au8; 512 << 10]);
    let (mut replies, mut bodies) = (Vec::new(), Vec::new());
    for _ in 0..1000 {
        send = send.ready().await.unwrap();
        let (reply, mut body) = send.send_request(grpc_request(&kvd, "/etcdserverpb.KV/Put"), false).unwrap();
        body.send_data(prefix(1_536 << 10), false).unwrap();
        body.send_data(half.clone(), false).unwrap();
        replies.push(tokio::spawn(status_of(reply)));
        bodies.push(body);
    }
    others_are_served(&kvd, "a thousand large messages").await;
    // Those the budget cannot hold are refused at once (ResourceExhausted);
    // the others wait for the rest of their messages. h2 ends a connection
    // that keeps sending on streams it reset over a thousand times
    // ("too_many_internal_resets"): that refuses the rest at once.
    let (mut refused, mut closed) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while refused + closed < 900 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        for r in replies.iter_mut().filter(|r| r.is_finished()) {
            match r.await.ok().flatten() {
                Some(code) if code == "8" => refused += 1,
                Some(e) if e.starts_with("error") => closed += 1,
                other => panic!("a stream that never sent its whole message was answered {other:?}"),
            }
        }
        replies.retain(|r| !r.is_finished());
    }
    others_are_served(&kvd, "a thousand large messages").await;
    let grew = sampler.peak().saturating_sub(base);
    eprintln!(
        "RSS {} MiB before, peak {} MiB; {refused} refused, {closed} ended with the connection",
        base / MIB,
        sampler.peak() / MIB
    );
    assert!(refused >= 100, "only {refused} refused (ResourceExhausted)");
    assert!(refused + closed >= 900, "only {} of 1000 refused", refused + closed);
    assert!(grew < 150 * MIB, "kvd's memory grew by {} MiB", grew / MIB);
    drop(bodies);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_opens_its_window_holds_a_bounded_amount() {
    let dir = tempfile::tempdir().unwrap();
    let kvd = Proc::kvd_ready(&dir.path().join("kvd"), &[]).await;
    let mut kv = kvd.kv().await;
    let value = vec![b'v'; 200 << 10];
    kv.put(PutRequest { key: b"big".to_vec(), value, ..Default::default() }).await.unwrap();
    others_are_served(&kvd, "warm-up").await;
    let base = rss(kvd.child.as_ref().unwrap().id());
    let sampler = Sampler::start(&kvd);
    // No stream of this connection may receive a byte of DATA.
    let mut send = connect_with(&kvd, h2::client::Builder::new().initial_window_size(0).clone()).await;
    let get = framed(&RangeRequest { key: b"big".to_vec(), ..Default::default() });
    let mut replies = Vec::new();
    // 3,000 replies of 200 KiB: 600 MiB if all were held.
    for _ in 0..3000 {
        send = send.ready().await.unwrap();
        let (reply, mut body) = send.send_request(grpc_request(&kvd, "/etcdserverpb.KV/Range"), false).unwrap();
        body.send_data(get.clone(), true).unwrap();
        replies.push(reply);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    others_are_served(&kvd, "a zero window").await;
    let grew = sampler.peak().saturating_sub(base);
    eprintln!("RSS {} MiB before, peak {} MiB", base / MIB, sampler.peak() / MIB);
    // The budget: 64 MiB of waiting replies, plus the replies of the calls
    // already running when it filled (at most 1,024 calls hold a slot:
    // 200 MiB of these), and some slack.
    assert!(grew < 350 * MIB, "kvd's memory grew by {} MiB", grew / MIB);
    drop(replies);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_loris_stream_holds_no_one_up() {
    let dir = tempfile::tempdir().unwrap();
    let kvd = Proc::kvd_ready(&dir.path().join("kvd"), &[]).await;
    let mut send = connect_with(&kvd, h2::client::Builder::new()).await;
    let mut bodies = Vec::new();
    for _ in 0..20 {
        send = send.ready().await.unwrap();
        let (_reply, mut body) = send.send_request(grpc_request(&kvd, "/etcdserverpb.KV/Put"), false).unwrap();
        body.send_data(prefix(1 << 20), false).unwrap();
        bodies.push(body);
    }
    // A byte every 100 ms on each, while others go on as usual (on this
    // connection too: a slow stream holds up only itself).
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        for b in bodies.iter_mut() {
            b.send_data(Bytes::from_static(b"x"), false).unwrap();
        }
        others_are_served(&kvd, "slow-loris streams").await;
        send = send.ready().await.unwrap();
        let (reply, mut body) = send.send_request(grpc_request(&kvd, "/etcdserverpb.KV/Put"), false).unwrap();
        body.send_data(framed(&PutRequest { key: b"same-conn".to_vec(), ..Default::default() }), true).unwrap();
        let status = tokio::time::timeout(Duration::from_secs(5), status_of(reply)).await.expect("answered");
        assert_eq!(status.as_deref(), Some("0"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_body_that_never_ends_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let (kvd, base, sampler) = measured_kvd(dir.path()).await;
    let addr = kvd.endpoint.trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v3/kv/put HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(b"10\r\n{\"key\":\"Zm9v\",\"v\r\n").await.unwrap();
    let chunk = vec![b'A'; 1 << 20];
    let mut framed_chunk = format!("{:x}\r\n", chunk.len()).into_bytes();
    framed_chunk.extend_from_slice(&chunk);
    framed_chunk.extend_from_slice(b"\r\n");
    let mut sent = 0u64;
    while sent < 512 * MIB {
        match tokio::time::timeout(Duration::from_secs(5), s.write_all(&framed_chunk)).await {
            Ok(Ok(())) => sent += chunk.len() as u64,
            _ => break,
        }
    }
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut answer)).await.unwrap().unwrap_or(0);
    let answer = String::from_utf8_lossy(&answer[..n]).to_string();
    others_are_served(&kvd, "an endless gateway body").await;
    let grew = sampler.peak().saturating_sub(base);
    eprintln!(
        "sent {} MiB; RSS {} MiB before, peak {} MiB; answer {answer:?}",
        sent / MIB,
        base / MIB,
        sampler.peak() / MIB
    );
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("request body larger than max"), "{answer}");
    assert!(grew < 64 * MIB, "kvd's memory grew by {} MiB", grew / MIB);
}

/// The peer port is served by the same HTTP/2 layer, with its own limits
/// (64 MiB messages, 200 streams, 256 MiB of messages being read per
/// connection): a call that streams past its message is answered and
/// stopped, and half-sent large messages hold no more than the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_port_bounds_what_a_connection_holds() {
    let dir = tempfile::tempdir().unwrap();
    let (kvd, base, sampler) = measured_kvd(dir.path()).await;
    let peer = format!("http://{}", kvd.flag("--listen-peer-urls").unwrap().trim_start_matches("http://"));
    let as_peer = |path: &str| {
        Request::builder()
            .method(Method::POST)
            .uri(format!("{peer}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap()
    };
    let addr = peer.trim_start_matches("http://").to_string();
    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (send, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        send.ready().await.unwrap()
    };
    // A 2-byte ForwardRequest, then 512 MiB.
    let mut send = connect().await;
    let (reply, body) = send.send_request(as_peer("/kvdpeerpb.Peer/Forward"), false).unwrap();
    let first = framed(&kvd_api::kvdpeerpb::ForwardRequest { cluster_id: 1, request: Vec::new().into() });
    let chunk = Bytes::from(vec![0x5au8; 1 << 20]);
    let pusher = tokio::spawn(stream_until_stopped(body, first, chunk, 512 * MIB));
    let status = tokio::time::timeout(Duration::from_secs(20), status_of(reply)).await.expect("an answer");
    assert!(status.is_some(), "the peer call was not answered");
    let sent = tokio::time::timeout(Duration::from_secs(20), pusher).await.expect("the stream is stopped").unwrap();
    assert!(sent < 512 * MIB, "the peer port read all {} MiB", sent / MIB);
    // 150 streams each declaring a 48 MiB message and sending 2 MiB of it.
    let mut send = connect().await;
    let part = Bytes::from(vec![0x5au8; 2 << 20]);
    let mut bodies = Vec::new();
    for _ in 0..150 {
        send = send.ready().await.unwrap();
        let (_reply, mut body) = send.send_request(as_peer("/kvdpeerpb.Peer/AppendEntries"), false).unwrap();
        body.send_data(prefix(48 << 20), false).unwrap();
        body.send_data(part.clone(), false).unwrap();
        bodies.push(body);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    others_are_served(&kvd, "hostile peer streams").await;
    let grew = sampler.peak().saturating_sub(base);
    eprintln!(
        "peer port: {} MiB out before the stop; RSS {} MiB before, peak {} MiB",
        sent / MIB,
        base / MIB,
        sampler.peak() / MIB
    );
    // Without the budget: 150 x 2 MiB read into buffers.
    assert!(grew < 200 * MIB, "kvd's memory grew by {} MiB", grew / MIB);
    drop(bodies);
}

/// One HTTP/2 frame.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A connection whose `:authority` kvd mends (`http://…`, as etcdctl 3.4
/// sends it; `rpc/conn/authority.rs`) decodes every header block itself:
/// the first request indexes a 4,000-byte field, the second refers to it
/// 16,000 times, 64 MB of headers from 16 KB. A hundred such connections
/// at once: each is ended at the header list size (16 KiB), and memory
/// stays flat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_blocks_that_decode_to_64_mb_on_mended_connections_are_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let (kvd, base, sampler) = measured_kvd(dir.path()).await;
    let addr = kvd.endpoint.trim_start_matches("http://").to_string();
    let mut enc = loona_hpack::Encoder::new();
    let first: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", b"/etcdserverpb.KV/Range"),
        (b":authority", b"http://127.0.0.1:2379"),
        (b"content-type", b"application/grpc"),
        (b"x-big", &[b'a'; 4000]),
    ];
    let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    wire.extend(h2_frame(0x4, 0, 0, &[]));
    wire.extend(h2_frame(0x1, 0x4 | 0x1, 1, &enc.encode(first)));
    // 0x80 | 62: the newest entry of the client's dynamic table.
    wire.extend(h2_frame(0x1, 0x4 | 0x1, 3, &[0x80 | 62; 16_000]));
    let ended = futures::future::join_all((0..100).map(|_| {
        let (addr, wire) = (addr.clone(), wire.clone());
        tokio::spawn(async move {
            let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            tcp.write_all(&wire).await.unwrap();
            // Whatever kvd answers, until it closes the connection.
            let mut sink = vec![0u8; 64 << 10];
            tokio::time::timeout(Duration::from_secs(20), async {
                while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await
            .is_ok()
        })
    }))
    .await;
    others_are_served(&kvd, "a hundred 64 MB header blocks").await;
    let grew = sampler.peak().saturating_sub(base);
    eprintln!("RSS {} MiB before, peak {} MiB", base / MIB, sampler.peak() / MIB);
    assert!(ended.into_iter().all(|e| e.unwrap()), "a connection kvd did not end");
    assert!(grew < 64 * MIB, "kvd's memory grew by {} MiB", grew / MIB);
}
