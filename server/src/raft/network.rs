//! The peer network, client side: openraft's RPCs to other members over
//! kvd's gRPC peer service (`kvdpeerpb.Peer` on `--listen-peer-urls`). One
//! lazily connected channel per peer; tonic reconnects with backoff. Payloads
//! are openraft's own request and response types, postcard-encoded.

use std::future::Future;
use std::time::Duration;

use kvd_api::kvdpeerpb::RaftPayload;
use kvd_api::kvdpeerpb::peer_client::PeerClient;
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::type_config::alias::{SnapshotOf, VoteOf};
use openraft::{OptionalSend, RaftNetworkFactory, RaftNetworkV2};
use tonic::transport::Channel;

use super::{Member, SnapshotData, TypeConfig, decode, encode};
use crate::metrics;

/// Largest peer message accepted or sent (a batch of entries).
pub const MAX_PEER_MESSAGE: usize = 64 << 20;

/// Makes one client per peer.
pub struct PeerNetwork {
    pub cluster_id: u64,
}

/// A connection to one peer.
pub struct Peer {
    target: u64,
    cluster_id: u64,
    client: Result<PeerClient<Channel>, String>,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &Member) -> Self::Network {
        let client = match node.peer_urls.first() {
            Some(url) => Channel::from_shared(url.clone())
                .map(|e| {
                    let ch = e.connect_timeout(Duration::from_secs(1)).tcp_nodelay(true).connect_lazy();
                    PeerClient::new(ch)
                        .max_decoding_message_size(MAX_PEER_MESSAGE)
                        .max_encoding_message_size(MAX_PEER_MESSAGE)
                })
                .map_err(|e| format!("peer {target:x}: bad peer URL {url}: {e}")),
            None => Err(format!("peer {target:x} has no peer URL")),
        };
        Peer { target, cluster_id: self.cluster_id, client }
    }
}

fn unreachable(msg: impl ToString) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::from_string(msg))
}

impl Peer {
    /// One unary call with openraft's deadline; transport failures are "unreachable".
    async fn call<Req: serde::Serialize, Resp: for<'a> serde::Deserialize<'a>>(
        &mut self,
        req: &Req,
        option: &RPCOption,
        vote: bool,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let m = metrics::get();
        let to = metrics::ToLabel { To: format!("{:x}", self.target) };
        let client = self.client.as_mut().map_err(|e| unreachable(e.clone()))?;
        let payload = RaftPayload { cluster_id: self.cluster_id, data: encode(req).to_vec() };
        let sent = payload.data.len() as u64;
        let fut = async { if vote { client.vote(payload).await } else { client.append_entries(payload).await } };
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
            Ok(Err(s)) if s.code() == tonic::Code::Unavailable || s.code() == tonic::Code::Unknown => {
                return Err(unreachable(format!("peer {:x}: {}", self.target, s.message())));
            }
            Ok(Err(s)) => {
                return Err(RPCError::Network(NetworkError::from_string(format!("peer {:x}: {s}", self.target))));
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        decode(&resp.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }
}

impl RaftNetworkV2<TypeConfig> for Peer {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&rpc, &option, false).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&rpc, &option, true).await
    }

    async fn full_snapshot(
        &mut self,
        _vote: VoteOf<TypeConfig>,
        _snapshot: SnapshotOf<TypeConfig, SnapshotData>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        // A member that fell behind the purged log needs a snapshot stream;
        // until that lands it waits (and is reported) as unreachable.
        Err(StreamingError::Unreachable(Unreachable::from_string(format!(
            "peer {:x} needs a snapshot; snapshot streaming to peers is not implemented yet",
            self.target
        ))))
    }
}
