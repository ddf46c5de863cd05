//! The peer network, client side: openraft's RPCs to other members over
//! kvd's gRPC peer service (`kvdpeerpb.Peer` on `--listen-peer-urls`). One
//! lazily connected channel per peer; tonic reconnects with backoff. Payloads
//! are openraft's own request and response types, postcard-encoded.
//!
//! A peer can vanish without closing its connections (a pod's network
//! namespace is deleted, a host loses power) and come back elsewhere under
//! the same name. HTTP/2 pings find such a connection dead within
//! [`KEEPALIVE_INTERVAL`] + [`KEEPALIVE_TIMEOUT`], and the reconnect looks
//! the name up again; without them every request would time out on it
//! until TCP gives up, about 15 minutes later. Every message names the
//! member it is for, and a member refuses what is not ([`WRONG_MEMBER`]):
//! a reused address must not make another member answer for the target.

use std::future::Future;
use std::time::Duration;

use kvd_api::kvdpeerpb::peer_client::PeerClient;
use kvd_api::kvdpeerpb::{RaftPayload, SnapshotChunk};
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotOf, VoteOf};
use openraft::{OptionalSend, RaftNetworkFactory, RaftNetworkV2};
use tonic::transport::{Channel, Endpoint};

mod append_stream;

use super::{Member, SnapshotData, TypeConfig, decode, encode};
use crate::metrics;

/// Largest peer message accepted or sent (a batch of entries).
pub const MAX_PEER_MESSAGE: usize = 64 << 20;

/// How often an open peer connection is pinged, busy or idle.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a ping may go unanswered before its connection is dropped.
/// As etcd's peer read timeout: a ping sent behind a large AppendEntries or
/// snapshot chunk on a slow link waits for the bytes ahead of it.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How a member refuses a message meant for another member (the start of
/// its FailedPrecondition message); the sender then reconnects.
pub const WRONG_MEMBER: &str = "etcdserver: peer message for another member";

/// The endpoint for a peer URL, as every peer connection is made: a short
/// connect timeout, no Nagle delay, and keepalive pings (see the top of
/// this file).
pub fn peer_endpoint(url: &str, tls: Option<&tonic::transport::ClientTlsConfig>) -> Result<Endpoint, String> {
    Ok(crate::tls::endpoint(url, tls)?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

fn peer_client(endpoint: &Endpoint) -> PeerClient<Channel> {
    PeerClient::new(endpoint.connect_lazy())
        .max_decoding_message_size(MAX_PEER_MESSAGE)
        .max_encoding_message_size(MAX_PEER_MESSAGE)
}

/// The unary peer RPCs that carry openraft messages.
#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    PreVote,
    TransferLeader,
}

/// A peer's answer to PreVote when it predates it (a rolling upgrade).
const PRE_VOTE_UNIMPLEMENTED: &str = "PreVote unimplemented";

/// Makes one client per peer.
pub struct PeerNetwork {
    pub cluster_id: u64,
    /// For https peer URLs.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
}

/// A connection to one peer.
pub struct Peer {
    target: u64,
    cluster_id: u64,
    /// Where the peer is, or why it cannot be reached.
    endpoint: Result<Endpoint, String>,
    client: Option<PeerClient<Channel>>,
    /// Whether the peer takes the replication stream (`AppendStream`); one
    /// that predates it gets AppendEntries one by one until it is reached
    /// anew (it may come back upgraded).
    streams: bool,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &Member) -> Self::Network {
        let endpoint = match node.peer_urls.first() {
            Some(url) => {
                peer_endpoint(url, self.tls.as_ref()).map_err(|e| format!("peer {target:x}: bad peer URL {url}: {e}"))
            }
            None => Err(format!("peer {target:x} has no peer URL")),
        };
        Peer { target, cluster_id: self.cluster_id, endpoint, client: None, streams: true }
    }
}

fn unreachable(msg: impl ToString) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::from_string(msg))
}

impl Peer {
    /// The client, connecting (lazily) if there is none.
    fn client(&mut self) -> Result<&mut PeerClient<Channel>, String> {
        let endpoint = self.endpoint.as_ref().map_err(Clone::clone)?;
        Ok(self.client.get_or_insert_with(|| peer_client(endpoint)))
    }

    /// Drops the connection after `status`, if it reached another member
    /// than the target (its address was reused): the next call connects
    /// anew and looks the target's name up again.
    fn reconnect_if_wrong_member(&mut self, status: &tonic::Status) -> bool {
        let wrong = status.code() == tonic::Code::FailedPrecondition && status.message().starts_with(WRONG_MEMBER);
        if wrong {
            tracing::warn!(peer = %format_args!("{:x}", self.target), error = status.message(), "reconnecting to peer");
            self.client = None;
        }
        wrong
    }

    /// One unary call with openraft's deadline; transport failures are "unreachable".
    async fn call<Req: serde::Serialize, Resp: for<'a> serde::Deserialize<'a>>(
        &mut self,
        req: &Req,
        option: &RPCOption,
        kind: Rpc,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let m = metrics::get();
        let to = metrics::ToLabel { To: format!("{:x}", self.target) };
        let payload = RaftPayload { cluster_id: self.cluster_id, data: encode(req).to_vec(), to: self.target };
        let client = self.client().map_err(unreachable)?;
        let sent = payload.data.len() as u64;
        let fut = async {
            match kind {
                Rpc::Append => client.append_entries(payload).await,
                Rpc::Vote => client.vote(payload).await,
                Rpc::PreVote => client.pre_vote(payload).await,
                Rpc::TransferLeader => client.transfer_leader(payload).await,
            }
        };
        let start = std::time::Instant::now();
        let res = tokio::time::timeout(option.hard_ttl(), fut).await;
        match &res {
            Ok(Ok(r)) => {
                m.peer_sent_bytes.get_or_create(&to).inc_by(sent);
                m.peer_rtt.get_or_create(&to).observe(start.elapsed().as_secs_f64());
                m.peer_received_bytes
                    .get_or_create(&metrics::FromLabel { From: to.To.clone() })
                    .inc_by(r.get_ref().data.len() as u64);
            }
            _ => {
                m.peer_sent_failures.get_or_create(&to).inc();
            }
        }
        let resp = match res {
            Err(_) => return Err(unreachable(format!("peer {:x}: timed out", self.target))),
            Ok(Err(s)) if s.code() == tonic::Code::Unimplemented && matches!(kind, Rpc::PreVote) => {
                return Err(RPCError::Network(NetworkError::from_string(PRE_VOTE_UNIMPLEMENTED)));
            }
            Ok(Err(s)) => return Err(self.failed(&s)),
            Ok(Ok(r)) => r.into_inner(),
        };
        decode(&resp.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }

    /// What openraft is told of a call the peer or the transport failed:
    /// "unreachable" when no member answered, or another member did.
    fn failed(&mut self, s: &tonic::Status) -> RPCError<TypeConfig> {
        if s.code() == tonic::Code::Unavailable {
            self.streams = true;
        }
        if s.code() == tonic::Code::Unavailable || s.code() == tonic::Code::Unknown || self.reconnect_if_wrong_member(s)
        {
            return unreachable(format!("peer {:x}: {}", self.target, s.message()));
        }
        RPCError::Network(NetworkError::from_string(format!("peer {:x}: {s}", self.target)))
    }
}

impl RaftNetworkV2<TypeConfig> for Peer {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&rpc, &option, Rpc::Append).await
    }

    /// The replication stream ([`append_stream`]); AppendEntries one
    /// by one to a peer that predates it.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>, RPCError<TypeConfig>>,
    >
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        if !self.streams {
            return openraft::network::stream_append_sequential(self, input, option);
        }
        Box::pin(append_stream::open(self, input, option))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&rpc, &option, Rpc::Vote).await
    }

    /// Pre-Vote (raft §9.6, etcd's `--pre-vote`): a member back from a pause
    /// or a partition asks before it raises the term, so that it cannot
    /// depose a leader the others still hear from. A peer that cannot be
    /// reached is no grant; one too old to know the RPC grants, as openraft
    /// does for a network without it.
    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(&rpc, &option, Rpc::PreVote).await {
            Err(RPCError::Network(e)) if e.to_string().contains(PRE_VOTE_UNIMPLEMENTED) => {
                Ok(VoteResponse::new(rpc.vote, None, true))
            }
            other => other,
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&req, &option, Rpc::TransferLeader).await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let target = self.target;
        let unreachable = |msg: String| StreamingError::Unreachable(Unreachable::from_string(msg));
        let client = self.client().map_err(unreachable)?.clone();
        // Export the data to a file (one consistent read of the backend),
        // then stream it. The backend has moved on since the snapshot was
        // built, so the metadata sent is read from the exported records: the
        // receiver persists the applied log id and membership the data holds,
        // not older ones (a stale membership there survives its restart).
        let (path, meta) = match &snapshot.snapshot {
            SnapshotData::Local(be) => {
                let be = be.clone();
                let dir = be.path().parent().map(|p| p.join("tmp")).unwrap_or_else(std::env::temp_dir);
                let name = format!("send-{target:x}-{}-{}.snap", std::process::id(), super::state_machine::unique());
                let (path, meta) = tokio::task::spawn_blocking(move || super::state_machine::export(&be, &dir, &name))
                    .await
                    .map_err(|e| unreachable(e.to_string()))?
                    .map_err(|e| unreachable(format!("exporting snapshot for {target:x}: {e}")))?;
                // The data is never older than what openraft built the snapshot at.
                if meta.last_log_id < snapshot.meta.last_log_id {
                    let _ = std::fs::remove_file(&path);
                    return Err(unreachable(format!(
                        "exported snapshot for {target:x} holds {:?}, older than its build at {:?}",
                        meta.last_log_id, snapshot.meta.last_log_id
                    )));
                }
                (path, meta)
            }
            SnapshotData::Received(p) => (p.clone(), snapshot.meta.clone()),
        };
        tracing::info!(to = %format_args!("{target:x}"), built_at = ?snapshot.meta.last_log_id, data_at = ?meta.last_log_id, "sending snapshot");
        let header = encode(&(vote, meta)).to_vec();
        let res = send_snapshot(client, (self.cluster_id, target), header, &path, cancel, option).await;
        if matches!(snapshot.snapshot, SnapshotData::Local(_)) {
            let _ = std::fs::remove_file(&path);
        }
        res.map_err(|e| {
            let msg = match e {
                SendError::Status(s) => {
                    self.reconnect_if_wrong_member(&s);
                    s.to_string()
                }
                SendError::Other(m) => m,
            };
            unreachable(format!("sending snapshot to {target:x}: {msg}"))
        })
    }
}

/// Why a snapshot was not sent: the receiver's answer, or anything else.
enum SendError {
    Status(tonic::Status),
    Other(String),
}

impl From<String> for SendError {
    fn from(e: String) -> SendError {
        SendError::Other(e)
    }
}

/// Streams the snapshot file in chunks to member `to`; the first carries `header`.
async fn send_snapshot(
    mut client: PeerClient<Channel>,
    (cluster_id, to): (u64, u64),
    header: Vec<u8>,
    path: &std::path::Path,
    cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
    option: RPCOption,
) -> Result<SnapshotResponse<TypeConfig>, SendError> {
    use tokio::io::AsyncReadExt;
    const CHUNK: usize = 1 << 20;
    let mut file = tokio::fs::File::open(path).await.map_err(|e| e.to_string())?;
    let (tx, rx) = tokio::sync::mpsc::channel::<SnapshotChunk>(4);
    let reader = async move {
        let mut header = Some(header);
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = file.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok::<(), String>(());
            }
            buf.truncate(n);
            let chunk = SnapshotChunk { cluster_id, header: header.take().unwrap_or_default(), data: buf, to };
            if tx.send(chunk).await.is_err() {
                return Ok(());
            }
        }
    };
    let call = client.install_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx));
    let timeout =
        std::time::Duration::from_millis(option.hard_ttl().as_millis() as u64).max(std::time::Duration::from_secs(60));
    let resp = tokio::select! {
        r = async { tokio::join!(reader, tokio::time::timeout(timeout, call)) } => {
            r.0?;
            r.1.map_err(|_| "timed out".to_string())?.map_err(SendError::Status)?
        }
        closed = cancel => return Err(SendError::Other(format!("replication closed: {closed}"))),
    };
    decode(&resp.into_inner().data).map_err(|e| SendError::Other(e.to_string()))
}
