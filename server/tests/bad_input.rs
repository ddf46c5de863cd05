//! Hostile and malformed requests: each gets etcd's error (compared with the
//! real etcd where both answer), and kvd keeps its data and keeps serving:
//! oversized keys and values, deeply nested txns, huge ranges, a hundred
//! thousand watchers on one stream, a flood of lease grants, and a flood of
//! connections past the process's file descriptor limit. RELIABILITY.md
//! lists what each got.

mod common;

use std::time::{Duration, Instant};

use common::Proc;
use kvd_api::etcdserverpb::kv_client::KvClient;
use kvd_api::etcdserverpb::lease_client::LeaseClient;
use kvd_api::etcdserverpb::request_op::Request;
use kvd_api::etcdserverpb::watch_request::RequestUnion;
use kvd_api::etcdserverpb::{
    LeaseGrantRequest, LeaseLeasesRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest,
};
use tonic::transport::Channel;

fn client(p: &Proc) -> KvClient<Channel> {
    KvClient::new(Channel::from_shared(p.endpoint.clone()).unwrap().connect_lazy())
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}

/// Writes a key that every hostile request must leave alone.
async fn write_sentinel(p: &Proc) {
    client(p).put(put(b"sentinel".to_vec(), b"intact".to_vec())).await.unwrap();
}

/// A single kvd holding the sentinel (its data dir lives as long as the guard).
async fn kvd_with_sentinel() -> (tempfile::TempDir, Proc) {
    let dir = tempfile::tempdir().unwrap();
    let kvd = Proc::kvd_ready(&dir.path().join("kvd"), &[]).await;
    write_sentinel(&kvd).await;
    (dir, kvd)
}

/// The sentinel is still there, unchanged, and the server answers.
async fn check(p: &Proc) {
    let r = client(p).range(RangeRequest { key: b"sentinel".to_vec(), ..Default::default() }).await;
    let kvs = r.expect("still serving").into_inner().kvs;
    assert_eq!(kvs.len(), 1, "the sentinel is gone");
    assert_eq!(kvs[0].value, b"intact");
}

/// (code, message) of a failed call, or ("Ok", "") when it succeeded.
fn outcome<T>(r: Result<T, tonic::Status>) -> (String, String) {
    match r {
        Ok(_) => ("Ok".into(), String::new()),
        Err(s) => (format!("{:?}", s.code()), s.message().to_string()),
    }
}

fn put(key: Vec<u8>, value: Vec<u8>) -> PutRequest {
    PutRequest { key, value, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_keys_values_and_txns_get_etcds_error_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (kvd, etcd) = common::kvd_and_etcd(dir.path(), &[]).await;
    write_sentinel(&kvd).await;
    // Over --max-request-bytes (1.5 MiB): etcd's own error. Over the gRPC
    // limit (that plus 512 KiB): gRPC's error, from both.
    let over = vec![b'v'; 1_600_000];
    let big = vec![b'v'; 2 << 20];
    let many: Vec<RequestOp> = (0..20)
        .map(|i| RequestOp {
            request: Some(Request::RequestPut(put(format!("t{i}").into_bytes(), vec![b'x'; 90 << 10]))),
        })
        .collect();
    for (what, k, e, want) in [
        (
            "a 1.6 MiB value",
            outcome(client(&kvd).put(put(b"k".to_vec(), over.clone())).await),
            outcome(client(&etcd).put(put(b"k".to_vec(), over.clone())).await),
            "etcdserver: request is too large",
        ),
        (
            "a 1.6 MiB key",
            outcome(client(&kvd).put(put(over.clone(), b"v".to_vec())).await),
            outcome(client(&etcd).put(put(over.clone(), b"v".to_vec())).await),
            "etcdserver: request is too large",
        ),
        (
            "a txn of 20 puts of 90 KiB",
            outcome(client(&kvd).txn(TxnRequest { success: many.clone(), ..Default::default() }).await),
            outcome(client(&etcd).txn(TxnRequest { success: many.clone(), ..Default::default() }).await),
            "etcdserver: request is too large",
        ),
        (
            "a 2 MiB value",
            outcome(client(&kvd).put(put(b"k".to_vec(), big.clone())).await),
            outcome(client(&etcd).put(put(b"k".to_vec(), big.clone())).await),
            "grpc: received message larger than max",
        ),
    ] {
        eprintln!("{what}: kvd {k:?}, etcd {e:?}");
        assert_eq!(k, e, "{what}");
        assert!(k.1.starts_with(want), "{what}: {k:?}");
    }
    check(&kvd).await;
    let r = client(&kvd).range(RangeRequest { key: b"t0".to_vec(), ..Default::default() }).await.unwrap();
    assert!(r.into_inner().kvs.is_empty(), "part of a refused txn was applied");
}

/// A txn nested `depth` levels deep, with one put of `key` at the bottom.
fn nested(depth: usize, key: &str) -> TxnRequest {
    let mut t = TxnRequest {
        success: vec![RequestOp { request: Some(Request::RequestPut(put(key.into(), b"v".to_vec()))) }],
        ..Default::default()
    };
    for _ in 0..depth {
        t = TxnRequest { success: vec![RequestOp { request: Some(Request::RequestTxn(t)) }], ..Default::default() };
    }
    t
}

/// Nesting is applied whole up to 32 levels (etcd's limit is its 128-op
/// budget shared by the levels, about 127 deep); deeper, kvd refuses with
/// etcd's "too many operations" so every accepted txn still decodes inside
/// its raft entry; far deeper, where decoding stops (prost's recursion
/// limit), with the same error, as etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_txns_are_applied_whole_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (kvd, etcd) = common::kvd_and_etcd(dir.path(), &[]).await;
    write_sentinel(&kvd).await;
    for (depth, want) in [(10, "Ok"), (32, "Ok"), (40, "InvalidArgument"), (1000, "InvalidArgument")] {
        let key = format!("deep{depth}");
        let k = outcome(client(&kvd).txn(nested(depth, &key)).await);
        let e = outcome(client(&etcd).txn(nested(depth, &key)).await);
        eprintln!("txn nested {depth} deep: kvd {:?}, etcd {e:?}", (&k.0, &k.1[..k.1.len().min(120)]));
        assert_eq!(k.0.to_lowercase(), want.to_lowercase(), "depth {depth}: {k:?}");
        if want == "InvalidArgument" {
            assert_eq!(k.1, "etcdserver: too many operations in txn request");
        }
        let r = client(&kvd).range(RangeRequest { key: key.into_bytes(), ..Default::default() }).await.unwrap();
        assert_eq!(r.into_inner().kvs.len(), usize::from(want == "Ok"), "depth {depth}: applied in part or not at all");
    }
    check(&kvd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_range_is_served_or_limited_without_harm() {
    let (_dir, kvd) = kvd_with_sentinel().await;
    let mut kv = client(&kvd);
    let value = vec![b'r'; 1 << 20];
    for i in 0..64 {
        kv.put(put(format!("huge/{i:03}").into_bytes(), value.clone())).await.unwrap();
    }
    let all = RangeRequest { key: b"huge/".to_vec(), range_end: b"huge0".to_vec(), ..Default::default() };
    // A client that accepts 64 MiB gets it all; one with gRPC's default 4 MiB
    // limit gets gRPC's error, and the server goes on.
    let r = kv.range(all.clone()).await.unwrap().into_inner();
    assert_eq!(r.kvs.len(), 64);
    let small = KvClient::new(Channel::from_shared(kvd.endpoint.clone()).unwrap().connect_lazy());
    let (code, msg) = outcome(small.clone().range(all.clone()).await);
    eprintln!("64 MiB range to a client with a 4 MiB limit: {code} {msg}");
    assert_eq!(code, "OutOfRange", "{msg}");
    let limited = small.clone().range(RangeRequest { limit: 2, ..all.clone() }).await.unwrap().into_inner();
    assert_eq!((limited.kvs.len(), limited.count, limited.more), (2, 64, true));
    let counted = small.clone().range(RangeRequest { count_only: true, ..all }).await.unwrap().into_inner();
    assert_eq!((counted.kvs.len(), counted.count), (0, 64));
    check(&kvd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_watchers_on_one_stream_then_gone() {
    let (_dir, kvd) = kvd_with_sentinel().await;
    const N: usize = 100_000;
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let ch = Channel::from_shared(kvd.endpoint.clone()).unwrap().connect().await.unwrap();
    let sender = tokio::spawn(async move {
        for i in 0..N {
            let c = WatchCreateRequest { key: format!("w/{}", i % 1000).into_bytes(), ..Default::default() };
            let req = kvd_api::etcdserverpb::WatchRequest { request_union: Some(RequestUnion::CreateRequest(c)) };
            if tx.send(req).await.is_err() {
                break;
            }
        }
        tx
    });
    let mut stream = kvd_api::etcdserverpb::watch_client::WatchClient::new(ch)
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let start = Instant::now();
    let mut created = 0;
    while created < N {
        let r = tokio::time::timeout(Duration::from_secs(30), stream.message()).await.expect("watch stream stalled");
        let r = r.unwrap().expect("stream ended");
        created += usize::from(r.created);
    }
    eprintln!("{N} watchers created on one stream in {:?}", start.elapsed());
    // Writes go on, and every watcher of a key sees them.
    let t = Instant::now();
    client(&kvd).put(put(b"w/7".to_vec(), b"x".to_vec())).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "a put took {:?} with {N} watchers", t.elapsed());
    let mut events = 0;
    while events < N / 1000 {
        let r =
            tokio::time::timeout(Duration::from_secs(30), stream.message()).await.expect("no events").unwrap().unwrap();
        events += r.events.len();
    }
    assert_eq!(events, N / 1000);
    // Closing the stream frees them all.
    drop(stream);
    drop(sender.await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = kvd.metrics().await;
        if m.lines().any(|l| l == "etcd_debugging_mvcc_watcher_total 0") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "watchers not released:\n{}",
            m.lines().filter(|l| l.contains("watcher_total")).collect::<Vec<_>>().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    check(&kvd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_lease_grants_is_served_and_survives_a_restart() {
    let (_dir, mut kvd) = kvd_with_sentinel().await;
    const N: usize = 20_000;
    let ch = Channel::from_shared(kvd.endpoint.clone()).unwrap().connect_lazy();
    let start = Instant::now();
    let tasks: Vec<_> = (0..50)
        .map(|t| {
            let mut l = LeaseClient::new(ch.clone());
            tokio::spawn(async move {
                for _ in 0..N / 50 {
                    l.lease_grant(LeaseGrantRequest { ttl: 3600, id: 0 }).await.expect("grant");
                }
                t
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    eprintln!("{N} lease grants from 50 clients in {:?}", start.elapsed());
    let count = |p: &Proc| {
        let ch = Channel::from_shared(p.endpoint.clone()).unwrap().connect_lazy();
        async move { LeaseClient::new(ch).lease_leases(LeaseLeasesRequest {}).await.unwrap().into_inner().leases.len() }
    };
    assert_eq!(count(&kvd).await, N);
    kvd.restart();
    kvd.ready().await;
    assert_eq!(count(&kvd).await, N, "leases lost across a restart");
    check(&kvd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connections_past_the_fd_limit_leaves_kvd_serving() {
    let dir = tempfile::tempdir().unwrap();
    // kvd with at most 256 open files: the flood exhausts them.
    let kvd = Proc::kvd_with_fd_limit(&dir.path().join("kvd"), 256);
    kvd.ready().await;
    write_sentinel(&kvd).await;
    let addr = kvd.endpoint.trim_start_matches("http://").to_string();
    let mut held = Vec::new();
    let mut refused = 0;
    // Until the process has no descriptors left and the listen backlog is full.
    while held.len() < 600 && refused < 10 {
        match tokio::time::timeout(Duration::from_millis(300), tokio::net::TcpStream::connect(&addr)).await {
            Ok(Ok(s)) => held.push(s),
            _ => refused += 1,
        }
    }
    eprintln!("connection flood: {} connections held open, {refused} refused or timed out", held.len());
    assert!(held.len() < 600, "the flood never reached kvd's 256-file limit (is prlimit applied?)");
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(held);
    // Once the flood is gone, kvd serves again: it did not exit or stop accepting.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ch = Channel::from_shared(kvd.endpoint.clone()).unwrap().connect().await;
        if let Ok(ch) = ch
            && KvClient::new(ch).range(RangeRequest { key: b"sentinel".to_vec(), ..Default::default() }).await.is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "kvd stopped serving after the flood; log:\n{}", kvd.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    check(&kvd).await;
}

/// A call to a method or service that does not exist.
async fn call_missing(p: &Proc, path: &'static str) -> (String, String) {
    let ch = Channel::from_shared(p.endpoint.clone()).unwrap().connect_lazy();
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<RangeRequest, RangeRequest>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    outcome(grpc.unary(tonic::Request::new(RangeRequest::default()), path, codec).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_services_and_methods_are_unimplemented_as_in_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let (kvd, etcd) = common::kvd_and_etcd(dir.path(), &[]).await;
    write_sentinel(&kvd).await;
    let service =
        (call_missing(&kvd, "/etcdserverpb.Nope/Range").await, call_missing(&etcd, "/etcdserverpb.Nope/Range").await);
    assert_eq!(service.0, service.1, "unknown service");
    assert_eq!(service.0.0, "Unimplemented");
    let method =
        (call_missing(&kvd, "/etcdserverpb.KV/Nope").await, call_missing(&etcd, "/etcdserverpb.KV/Nope").await);
    assert_eq!(method.0.0, method.1.0, "unknown method: {method:?}");
    assert_eq!(method.0.0, "Unimplemented");
    // Nor does a made-up name become a label set in /metrics (grpc-go never
    // counts calls it could not route).
    let text = kvd.metrics().await;
    assert!(text.contains("grpc_method=\"Put\""), "the sentinel's Put is counted");
    assert!(!text.contains("Nope"), "an unknown name reached /metrics");
    check(&kvd).await;
}

/// The peer port refuses a message for another member (its address may
/// have been reused) or from another cluster, and survives one it cannot
/// decode; nothing reaches raft, and the data is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_messages_for_another_member_or_cluster_are_refused() {
    use kvd_api::etcdserverpb::StatusRequest;
    use kvd_api::etcdserverpb::maintenance_client::MaintenanceClient;
    use kvd_api::kvdpeerpb::peer_client::PeerClient;
    use kvd_api::kvdpeerpb::{ClusterInfoRequest, RaftPayload, SnapshotChunk};

    let (_dir, kvd) = kvd_with_sentinel().await;
    let ch = Channel::from_shared(kvd.endpoint.clone()).unwrap().connect_lazy();
    let status = MaintenanceClient::new(ch).status(StatusRequest {}).await.unwrap().into_inner();
    let me = status.header.expect("a header").member_id;
    let peer_url = kvd.flag("--listen-peer-urls").expect("a peer URL").to_string();
    let mut peer = PeerClient::new(Channel::from_shared(peer_url).unwrap().connect_lazy());
    let cluster = peer.cluster_info(ClusterInfoRequest {}).await.unwrap().into_inner().cluster_id;
    let raft_index = status.raft_index;

    let payload = |cluster_id, to| RaftPayload { cluster_id, to, data: vec![0xff; 64] };
    let (code, msg) = outcome(peer.append_entries(payload(cluster, me ^ 1)).await);
    assert_eq!(code, "FailedPrecondition", "{msg}");
    assert!(msg.starts_with("etcdserver: peer message for another member"), "{msg}");
    assert!(msg.contains(&format!("{me:x}")), "the refusal names this member: {msg}");
    let (code, msg) = outcome(peer.vote(payload(cluster, me ^ 1)).await);
    assert!(code == "FailedPrecondition" && msg.starts_with("etcdserver: peer message for another member"), "{msg}");
    let (code, msg) = outcome(peer.append_entries(payload(cluster ^ 1, me)).await);
    assert_eq!((code.as_str(), msg.as_str()), ("FailedPrecondition", "etcdserver: cluster ID mismatch"));
    let chunk = SnapshotChunk { cluster_id: cluster, to: me ^ 1, header: vec![1; 16], data: vec![2; 1024] };
    let (code, msg) = outcome(peer.install_snapshot(futures::stream::iter([chunk])).await);
    assert!(code == "FailedPrecondition" && msg.starts_with("etcdserver: peer message for another member"), "{msg}");
    // For this member, from this cluster, but not a raft message: refused, no panic.
    let (code, msg) = outcome(peer.append_entries(payload(cluster, me)).await);
    assert_ne!(code, "Ok", "{msg}");
    // The same on the replication stream, where each message is checked.
    let (code, msg) = streamed(&mut peer, payload(cluster, me ^ 1)).await;
    assert!(code == "FailedPrecondition" && msg.starts_with("etcdserver: peer message for another member"), "{msg}");
    assert!(msg.contains(&format!("{me:x}")), "the refusal names this member: {msg}");
    let (code, msg) = streamed(&mut peer, payload(cluster ^ 1, me)).await;
    assert_eq!((code.as_str(), msg.as_str()), ("FailedPrecondition", "etcdserver: cluster ID mismatch"));
    let (code, msg) = streamed(&mut peer, payload(cluster, me)).await;
    assert_ne!(code, "Ok", "{msg}");

    check(&kvd).await;
    let ch = Channel::from_shared(kvd.endpoint.clone()).unwrap().connect_lazy();
    let after = MaintenanceClient::new(ch).status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(after.raft_index, raft_index, "a refused message reached the raft log");
    let leftovers: Vec<_> = walk(&kvd.data_dir).into_iter().filter(|p| p.to_string_lossy().contains(".snap")).collect();
    assert!(leftovers.is_empty(), "a refused snapshot left files behind: {leftovers:?}");
}

/// The first answer to `p` sent alone on a replication stream (AppendStream).
async fn streamed(
    peer: &mut kvd_api::kvdpeerpb::peer_client::PeerClient<Channel>,
    p: kvd_api::kvdpeerpb::RaftPayload,
) -> (String, String) {
    let answers = match peer.append_stream(futures::stream::iter([p])).await {
        Ok(r) => r.into_inner().message().await,
        Err(s) => Err(s),
    };
    match answers {
        Ok(Some(a)) => ("Ok".into(), format!("an answer of {} bytes", a.data.len())),
        Ok(None) => ("Ok".into(), "no answer".into()),
        Err(s) => (format!("{:?}", s.code()), s.message().to_string()),
    }
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}
