//! The `grpc_requests` fuzz target: arbitrary requests to every method of
//! every client service of a real single-member kvd (raft, WAL, backend on
//! tmpfs) that this process starts once and serves on loopback.
//!
//! The first input byte picks the method. With its low bit set, the rest goes
//! out as raw message bytes (one frame, or several for streams); otherwise a
//! request of the method's type is built from the input's chunks and encoded,
//! so the fuzzer also reaches past the decoder. After each input the member
//! must still answer Status within 5 s with a revision that never went back;
//! any panic in the server ends the process, which the fuzzer reports.
//!
//! Left out: AuthEnable (every later request would need a token; the auth
//! tests cover that state). Alarms the input raised are disarmed after it.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use kvd_api::etcdserverpb as pb;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// Sends and receives message bytes as they are.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// How a method is called.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Unary,
    /// Server streaming: read until the end or a short while.
    ServerStream,
    /// Both ways: send every frame, read for a short while.
    Bidi,
    /// Unary, but may wait by design (a lock or election held by another
    /// lease): given up after a short while.
    Blocking,
}

/// Every client method but AuthEnable, by full path.
const METHODS: &[(&str, Kind)] = &[
    ("/etcdserverpb.KV/Range", Kind::Unary),
    ("/etcdserverpb.KV/Put", Kind::Unary),
    ("/etcdserverpb.KV/DeleteRange", Kind::Unary),
    ("/etcdserverpb.KV/Txn", Kind::Unary),
    ("/etcdserverpb.KV/Compact", Kind::Unary),
    ("/etcdserverpb.KV/RangeStream", Kind::ServerStream),
    ("/etcdserverpb.Watch/Watch", Kind::Bidi),
    ("/etcdserverpb.Lease/LeaseGrant", Kind::Unary),
    ("/etcdserverpb.Lease/LeaseRevoke", Kind::Unary),
    ("/etcdserverpb.Lease/LeaseKeepAlive", Kind::Bidi),
    ("/etcdserverpb.Lease/LeaseTimeToLive", Kind::Unary),
    ("/etcdserverpb.Lease/LeaseLeases", Kind::Unary),
    ("/etcdserverpb.Cluster/MemberAdd", Kind::Unary),
    ("/etcdserverpb.Cluster/MemberRemove", Kind::Unary),
    ("/etcdserverpb.Cluster/MemberUpdate", Kind::Unary),
    ("/etcdserverpb.Cluster/MemberList", Kind::Unary),
    ("/etcdserverpb.Cluster/MemberPromote", Kind::Unary),
    ("/etcdserverpb.Maintenance/Alarm", Kind::Unary),
    ("/etcdserverpb.Maintenance/Status", Kind::Unary),
    ("/etcdserverpb.Maintenance/Defragment", Kind::Unary),
    ("/etcdserverpb.Maintenance/Hash", Kind::Unary),
    ("/etcdserverpb.Maintenance/HashKV", Kind::Unary),
    ("/etcdserverpb.Maintenance/Snapshot", Kind::ServerStream),
    ("/etcdserverpb.Maintenance/MoveLeader", Kind::Unary),
    ("/etcdserverpb.Maintenance/Downgrade", Kind::Unary),
    ("/etcdserverpb.Auth/AuthDisable", Kind::Unary),
    ("/etcdserverpb.Auth/AuthStatus", Kind::Unary),
    ("/etcdserverpb.Auth/Authenticate", Kind::Unary),
    ("/etcdserverpb.Auth/UserAdd", Kind::Unary),
    ("/etcdserverpb.Auth/UserGet", Kind::Unary),
    ("/etcdserverpb.Auth/UserList", Kind::Unary),
    ("/etcdserverpb.Auth/UserDelete", Kind::Unary),
    ("/etcdserverpb.Auth/UserChangePassword", Kind::Unary),
    ("/etcdserverpb.Auth/UserGrantRole", Kind::Unary),
    ("/etcdserverpb.Auth/UserRevokeRole", Kind::Unary),
    ("/etcdserverpb.Auth/RoleAdd", Kind::Unary),
    ("/etcdserverpb.Auth/RoleGet", Kind::Unary),
    ("/etcdserverpb.Auth/RoleList", Kind::Unary),
    ("/etcdserverpb.Auth/RoleDelete", Kind::Unary),
    ("/etcdserverpb.Auth/RoleGrantPermission", Kind::Unary),
    ("/etcdserverpb.Auth/RoleRevokePermission", Kind::Unary),
    ("/v3electionpb.Election/Campaign", Kind::Blocking),
    ("/v3electionpb.Election/Proclaim", Kind::Unary),
    ("/v3electionpb.Election/Leader", Kind::Unary),
    ("/v3electionpb.Election/Observe", Kind::ServerStream),
    ("/v3electionpb.Election/Resign", Kind::Unary),
    ("/v3lockpb.Lock/Lock", Kind::Blocking),
    ("/v3lockpb.Lock/Unlock", Kind::Unary),
];

/// The member this process serves, and a channel to it.
struct Member {
    rt: tokio::runtime::Runtime,
    channel: Channel,
    /// The highest revision Status reported so far.
    revision: std::sync::atomic::AtomicI64,
}

fn member() -> &'static Member {
    static MEMBER: OnceLock<Member> = OnceLock::new();
    MEMBER.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let channel = rt.block_on(start()).expect("the fuzzed member starts");
        Member { rt, channel, revision: Default::default() }
    })
}

/// Starts a single member on loopback with its data on tmpfs where there is
/// one; returns a channel to its client port.
async fn start() -> Result<Channel, String> {
    let data = scratch_dir().map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let url = format!("http://{}", listener.local_addr().map_err(|e| e.to_string())?);
    let flags = <crate::config::Flags as clap::Parser>::try_parse_from([
        "kvd",
        "--data-dir",
        &data.display().to_string(),
        "--listen-client-urls",
        &url,
        "--advertise-client-urls",
        &url,
        "--bcrypt-cost",
        "4",
        "--heartbeat-interval",
        "50",
        "--election-timeout",
        "300",
    ])
    .map_err(|e| e.to_string())?;
    let cfg = flags.server_config().map_err(|e| e.to_string())?;
    let server = crate::etcdserver::EtcdServer::start(cfg).await.map_err(|e| e.to_string())?;
    server.run_background();
    let svc = axum::ServiceExt::<axum::extract::Request>::into_make_service(crate::rpc::client_service(server));
    tokio::spawn(async move { axum::serve(listener, svc).await });
    let channel = Channel::from_shared(url).map_err(|e| e.to_string())?.connect_lazy();
    let mut last = None;
    for _ in 0..100 {
        let read = pb::RangeRequest { key: b"ready".to_vec(), ..Default::default() }.encode_to_vec();
        match call(&channel, "/etcdserverpb.KV/Range", Kind::Unary, vec![read], Duration::from_secs(1)).await {
            Ok(()) => return Ok(channel),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("the member never served a read: {last:?}"))
}

/// The member's data dir, `kvd-fuzz-<pid>` on tmpfs where there is one. It
/// outlives the process (the member is never stopped), so the dirs of
/// processes that are gone are removed first.
fn scratch_dir() -> std::io::Result<std::path::PathBuf> {
    let shm = std::path::Path::new("/dev/shm");
    let root = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
    for e in std::fs::read_dir(&root)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("kvd-fuzz-")
            && !std::path::Path::new("/proc").join(pid).exists()
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let dir = root.join(format!("kvd-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Calls `path` with `frames`; `Err(None)` when it did not finish within `wait`.
async fn call(
    ch: &Channel,
    path: &'static str,
    kind: Kind,
    frames: Vec<Vec<u8>>,
    wait: Duration,
) -> Result<(), Option<Status>> {
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    let path = PathAndQuery::from_static(path);
    let work = async move {
        grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
        let mut frames = frames.into_iter().map(Bytes::from);
        match kind {
            Kind::Unary | Kind::Blocking => {
                grpc.unary(Request::new(frames.next().unwrap_or_default()), path, RawCodec).await.map(drop)
            }
            Kind::ServerStream => {
                let first = frames.next().unwrap_or_default();
                let mut s = grpc.server_streaming(Request::new(first), path, RawCodec).await?.into_inner();
                while s.message().await?.is_some() {}
                Ok(())
            }
            Kind::Bidi => {
                let out = tokio_stream::iter(frames.collect::<Vec<_>>());
                let mut s = grpc.streaming(Request::new(out), path, RawCodec).await?.into_inner();
                while s.message().await?.is_some() {}
                Ok(())
            }
        }
    };
    match tokio::time::timeout(wait, work).await {
        Ok(r) => r.map_err(Some),
        Err(_) => Err(None),
    }
}

/// One input: see the module comment.
pub fn grpc_requests(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else { return };
    let m = (pick as usize >> 1) % METHODS.len();
    let (path, kind) = METHODS[m];
    let frames = if pick & 1 == 1 {
        super::chunks(rest).into_iter().map(<[u8]>::to_vec).collect()
    } else {
        super::grpc_build::build(METHODS[m].0, super::chunks(rest))
    };
    let member = member();
    member.rt.block_on(async {
        // Streams and waits end by design only when the client goes: a
        // short while. Everything else must answer within kvd's timeouts.
        let wait = match kind {
            Kind::Unary => Duration::from_secs(15),
            _ => Duration::from_millis(100),
        };
        if let Err(None) = call(&member.channel, path, kind, frames, wait).await {
            assert!(kind != Kind::Unary, "{path} did not answer within {wait:?}");
        }
        disarm(&member.channel).await;
        let status = status(&member.channel).await;
        let rev = status.header.map(|h| h.revision).unwrap_or_default();
        let before = member.revision.fetch_max(rev, std::sync::atomic::Ordering::SeqCst);
        assert!(rev >= before, "{path}: the revision went back from {before} to {rev}");
    });
}

/// Raised alarms would turn every later write away: disarms each.
async fn disarm(ch: &Channel) {
    let mut alarm = pb::maintenance_client::MaintenanceClient::new(ch.clone());
    let Ok(list) = alarm.alarm(pb::AlarmRequest::default()).await else { return };
    for a in list.into_inner().alarms {
        let req = pb::AlarmRequest {
            action: pb::alarm_request::AlarmAction::Deactivate as i32,
            member_id: a.member_id,
            alarm: a.alarm,
        };
        let _ = alarm.alarm(req).await;
    }
}

/// The member's Status; panics when it does not answer.
async fn status(ch: &Channel) -> pb::StatusResponse {
    let mut m = pb::maintenance_client::MaintenanceClient::new(ch.clone());
    match tokio::time::timeout(Duration::from_secs(5), m.status(pb::StatusRequest {})).await {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(s)) if s.code() == Code::Unavailable => panic!("the member is gone: {s}"),
        Ok(Err(s)) => panic!("Status failed: {s}"),
        Err(_) => panic!("the member did not answer Status within 5 s"),
    }
}
