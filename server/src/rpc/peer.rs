//! The peer service (`kvdpeerpb.Peer` on `--listen-peer-urls`): raft traffic,
//! forwarded writes, snapshots and ReadIndex from other members of this cluster.

use std::sync::Arc;

use kvd_api::kvdpeerpb::peer_server::{Peer, PeerServer};
use kvd_api::kvdpeerpb::{
    ClusterInfoRequest, ClusterInfoResponse, ClusterMember, ClusterOpRequest, ClusterOpResponse, ForwardAnswer,
    ForwardBatchRequest, ForwardRequest, ForwardResponse, LeaseRenewRequest, LeaseRenewResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, RaftPayload, ReadIndexRequest, ReadIndexResponse, SnapshotChunk,
};
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status};

use crate::etcdserver::EtcdServer;
use crate::raft::network::{MAX_PEER_MESSAGE, WRONG_MEMBER};

pub struct PeerService {
    pub server: Arc<EtcdServer>,
}

/// That a message from cluster `cluster_id` for member `to` may reach
/// member `me` of cluster `mine` (`to` 0 names no member: older kvd did not).
fn check_target(mine: u64, me: u64, cluster_id: u64, to: u64) -> Result<(), Status> {
    if cluster_id != mine {
        return Err(Status::failed_precondition("etcdserver: cluster ID mismatch"));
    }
    if to != 0 && to != me {
        return Err(Status::failed_precondition(format!("{WRONG_MEMBER}: it is for {to:x}, this is {me:x}")));
    }
    Ok(())
}

impl PeerService {
    fn check_cluster(&self, cluster_id: u64) -> Result<(), Status> {
        check_target(self.server.cluster_id, self.server.member_id, cluster_id, 0)
    }

    /// The cluster check, and that the message is for this member.
    fn check_target(&self, cluster_id: u64, to: u64) -> Result<(), Status> {
        check_target(self.server.cluster_id, self.server.member_id, cluster_id, to)
    }

    /// A raft answer from this member.
    fn answer(&self, data: Vec<u8>) -> Response<RaftPayload> {
        Response::new(RaftPayload { cluster_id: self.server.cluster_id, data, to: 0 })
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let r = req.into_inner();
        self.check_target(r.cluster_id, r.to)?;
        let data = self.server.peer_append_entries(&r.data).await?;
        Ok(self.answer(data))
    }

    type AppendStreamStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<RaftPayload, Status>> + Send>>;

    /// A leader's replication stream: every message is checked as a unary
    /// AppendEntries is (cluster, target), and the first that fails ends
    /// the input; the answers so far go back, then the refusal.
    async fn append_stream(
        &self,
        req: Request<tonic::Streaming<RaftPayload>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        use futures::StreamExt;
        if crate::failpoints::fails("append_stream") {
            return Err(Status::unimplemented("unknown method AppendStream for service kvdpeerpb.Peer"));
        }
        let (cluster_id, me) = (self.server.cluster_id, self.server.member_id);
        let input = req
            .into_inner()
            .map(move |m| m.and_then(|m| check_target(cluster_id, me, m.cluster_id, m.to).map(|()| m.data)));
        let answers =
            self.server.peer_append_stream(input).map(move |r| r.map(|data| RaftPayload { cluster_id, data, to: 0 }));
        Ok(Response::new(Box::pin(answers)))
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let r = req.into_inner();
        self.check_target(r.cluster_id, r.to)?;
        let data = self.server.peer_vote(&r.data).await?;
        Ok(self.answer(data))
    }

    async fn pre_vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let r = req.into_inner();
        self.check_target(r.cluster_id, r.to)?;
        let data = self.server.peer_pre_vote(&r.data).await?;
        Ok(self.answer(data))
    }

    async fn transfer_leader(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let r = req.into_inner();
        self.check_target(r.cluster_id, r.to)?;
        let data = self.server.peer_transfer_leader(&r.data).await?;
        Ok(self.answer(data))
    }

    async fn forward(&self, req: Request<ForwardRequest>) -> Result<Response<ForwardResponse>, Status> {
        let r = req.into_inner();
        self.check_cluster(r.cluster_id)?;
        self.server.peer_forward([r.request]).await?;
        Ok(Response::new(ForwardResponse {}))
    }

    type ForwardStreamStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<ForwardAnswer, Status>> + Send>>;

    /// A follower's forwarded writes: each batch proposed in order (as a
    /// ForwardBatch call is) and answered in order; a batch from another
    /// cluster, or a broken stream, ends it.
    async fn forward_stream(
        &self,
        req: Request<tonic::Streaming<ForwardBatchRequest>>,
    ) -> Result<Response<Self::ForwardStreamStream>, Status> {
        use futures::StreamExt;
        let server = self.server.clone();
        let answers = req.into_inner().then(move |batch| {
            let server = server.clone();
            async move {
                let batch = batch?;
                check_target(server.cluster_id, server.member_id, batch.cluster_id, 0)?;
                Ok(match server.peer_forward(batch.requests).await {
                    Ok(()) => ForwardAnswer::default(),
                    Err(e) => {
                        let s = Status::from(e);
                        ForwardAnswer { code: s.code() as u32, message: s.message().to_string() }
                    }
                })
            }
        });
        // Nothing after the first error.
        let answers = answers.scan(false, |ended, a: Result<ForwardAnswer, Status>| {
            let next = (!*ended).then_some(a);
            *ended = next.as_ref().is_some_and(Result::is_err);
            futures::future::ready(next)
        });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn forward_batch(&self, req: Request<ForwardBatchRequest>) -> Result<Response<ForwardResponse>, Status> {
        let r = req.into_inner();
        self.check_cluster(r.cluster_id)?;
        // In order; a failure leaves the rest unproposed (and the follower
        // fails them all, as it would a timed-out forward: maybe applied).
        self.server.peer_forward(r.requests).await?;
        Ok(Response::new(ForwardResponse {}))
    }

    async fn install_snapshot(
        &self,
        req: Request<tonic::Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftPayload>, Status> {
        let mut stream = req.into_inner();
        let path = self.server.snapshot_receive_path().map_err(|e| Status::internal(e.to_string()))?;
        let mut file = tokio::fs::File::create(&path).await.map_err(|e| Status::internal(e.to_string()))?;
        let mut header: Option<Vec<u8>> = None;
        let res: Result<(), Status> = async {
            while let Some(chunk) = stream.message().await? {
                self.check_target(chunk.cluster_id, chunk.to)?;
                if header.is_none() {
                    header = Some(chunk.header);
                }
                file.write_all(&chunk.data).await.map_err(|e| Status::internal(e.to_string()))?;
            }
            // Written out (not synced: the install commits the data durably
            // to the backend, and the file is deleted after it; a crash
            // before that makes the leader send the snapshot again).
            file.flush().await.map_err(|e| Status::internal(e.to_string()))
        }
        .await;
        let header = match (res, header) {
            (Ok(()), Some(h)) => h,
            (Err(e), _) => {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(e);
            }
            (Ok(()), None) => return Err(Status::invalid_argument("empty snapshot stream")),
        };
        let data = self.server.peer_install_snapshot(&header, path).await?;
        Ok(self.answer(data))
    }

    async fn cluster_op(&self, req: Request<ClusterOpRequest>) -> Result<Response<ClusterOpResponse>, Status> {
        let r = req.into_inner();
        self.check_cluster(r.cluster_id)?;
        let op = r.op.ok_or_else(|| Status::invalid_argument("empty cluster request"))?;
        let member = self.server.cluster_op_local(op).await?;
        Ok(Response::new(ClusterOpResponse {
            member: member.map(|m| prost::Message::encode_to_vec(&m)).unwrap_or_default(),
        }))
    }

    async fn cluster_info(&self, _req: Request<ClusterInfoRequest>) -> Result<Response<ClusterInfoResponse>, Status> {
        let members = self
            .server
            .member_list()
            .into_iter()
            .map(|m| ClusterMember { id: m.id, started: !m.name.is_empty(), peer_urls: m.peer_ur_ls })
            .collect();
        Ok(Response::new(ClusterInfoResponse { cluster_id: self.server.cluster_id, members }))
    }

    async fn lease_renew(&self, req: Request<LeaseRenewRequest>) -> Result<Response<LeaseRenewResponse>, Status> {
        let r = req.into_inner();
        self.check_cluster(r.cluster_id)?;
        cut_off_forwarded_lease_call()?;
        Ok(Response::new(LeaseRenewResponse { ttl: self.server.local_lease_renew(r.id).await? }))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let r = req.into_inner();
        self.check_cluster(r.cluster_id)?;
        cut_off_forwarded_lease_call()?;
        let resp = match self.server.local_lease_status(r.id, r.keys).await? {
            Some(st) => {
                LeaseTimeToLiveResponse { found: true, remaining: st.remaining, granted: st.granted, keys: st.keys }
            }
            None => LeaseTimeToLiveResponse::default(),
        };
        Ok(Response::new(resp))
    }

    async fn read_index(&self, req: Request<ReadIndexRequest>) -> Result<Response<ReadIndexResponse>, Status> {
        self.check_cluster(req.into_inner().cluster_id)?;
        Ok(Response::new(ReadIndexResponse { index: self.server.peer_read_index().await? }))
    }
}

/// Fault point `forwarded_lease_call` (server/src/failpoints.rs): the
/// forwarding member sees what hyper reports for a call whose connection
/// closed before it was sent, as when the leader is killed.
fn cut_off_forwarded_lease_call() -> Result<(), Status> {
    if crate::failpoints::fails("forwarded_lease_call") {
        return Err(Status::cancelled("operation was canceled"));
    }
    Ok(())
}

/// The service for `--listen-peer-urls`: the peer service alone, served
/// without a router in front (as the client port's gRPC calls are, see
/// `dispatch.rs`); any other path answers gRPC's Unimplemented.
#[derive(Clone)]
pub struct PeerPort(PeerServer<PeerService>);

pub fn peer_port(server: Arc<EtcdServer>) -> PeerPort {
    PeerPort(
        PeerServer::new(PeerService { server })
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE),
    )
}

/// Streams one member's connection may have open at once (hyper's
/// default, which the peer port was served with).
const PEER_STREAMS: u32 = 200;

impl super::conn::Port for PeerPort {
    fn max_message(&self) -> usize {
        MAX_PEER_MESSAGE
    }

    fn max_streams(&self) -> u32 {
        PEER_STREAMS
    }

    /// Four of the largest raft messages at once: a leader's appends to a
    /// member, a follower's forwarded writes and a snapshot's chunks.
    fn request_budget(&self) -> usize {
        4 * MAX_PEER_MESSAGE
    }

    fn shape(&self, path: &str) -> (bool, bool) {
        // A snapshot comes as a stream of chunks, and a leader's replication
        // stream and a follower's forwarded writes are messages both ways
        // for as long as that member leads (they take no call slot, as a
        // Watch takes none); every other call is one message and one answer.
        let long = path.ends_with("/AppendStream") || path.ends_with("/ForwardStream");
        let streamed = long || path.ends_with("/InstallSnapshot");
        (!streamed, !long)
    }
}

type Answer = axum::http::Response<tonic::body::Body>;

fn as_axum(r: Answer) -> axum::response::Response {
    r.map(axum::body::Body::new)
}

impl tower::Service<axum::extract::Request> for PeerPort {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = futures::future::MapOk<
        <PeerServer<PeerService> as tower::Service<axum::extract::Request>>::Future,
        fn(Answer) -> axum::response::Response,
    >;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        tower::Service::<axum::extract::Request>::poll_ready(&mut self.0, cx)
    }

    fn call(&mut self, req: axum::extract::Request) -> Self::Future {
        use futures::TryFutureExt;
        self.0.call(req).map_ok(as_axum as fn(Answer) -> axum::response::Response)
    }
}
