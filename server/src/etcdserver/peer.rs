//! The server side of the peer protocol and the cluster-aware parts of the
//! request path: waiting for a leader, forwarding writes to it, and ReadIndex
//! through it.

use bytes::Bytes;
use kvd_api::kvdpeerpb::ReadIndexRequest;
use kvd_api::kvdpeerpb::peer_client::PeerClient;
use openraft::ReadPolicy;
use openraft::async_runtime::WatchReceiver;
use tokio::time::Instant;

use super::{EtcdServer, ServerError};
use crate::raft::network::MAX_PEER_MESSAGE;
use crate::raft::{Cmd, Member, TypeConfig, decode, encode};

use openraft::impls::ProgressResponder;
use openraft::raft::ClientWriteResult;

/// Where raft reports the outcome of a local proposal.
pub(crate) type WriteOutcome =
    openraft::type_config::alias::OneshotReceiverOf<TypeConfig, ClientWriteResult<TypeConfig>>;

impl EtcdServer {
    /// The current leader and its member record, waiting (until `deadline`)
    /// for an election if there is none.
    pub(crate) async fn wait_for_leader(&self, deadline: Instant) -> Result<(u64, Member), ServerError> {
        self.with_leader(deadline, |l, node| (l, node.clone())).await
    }

    /// `f` of the current leader and its member record, waiting (until
    /// `deadline`) for an election if there is none.
    async fn with_leader<T>(&self, deadline: Instant, f: impl Fn(u64, &Member) -> T) -> Result<T, ServerError> {
        let mut rx = self.raft.metrics();
        loop {
            {
                let m = rx.borrow_watched();
                if let Some(l) = m.current_leader
                    && let Some(node) = m.membership_config.get_node(&l)
                {
                    return Ok(f(l, node));
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(ServerError::Stopped),
                Err(_) => return Err(ServerError::NoLeader),
            }
        }
    }

    /// A client of `leader`'s peer service, over one long-lived channel per URL.
    pub(crate) fn peer_client(&self, leader: &Member) -> Result<PeerClient<tonic::transport::Channel>, ServerError> {
        let url = leader.peer_urls.first().ok_or(ServerError::NoLeader)?;
        let mut channels = self.peer_channels.lock();
        let ch = match channels.get(url) {
            Some(ch) => ch.clone(),
            None => {
                let ch = crate::raft::network::peer_endpoint(url, self.cfg.peer_client_tls.as_ref())
                    .map_err(|e| ServerError::Internal(format!("leader peer URL {e}")))?
                    .connect_lazy();
                channels.insert(url.clone(), ch.clone());
                ch
            }
        };
        Ok(PeerClient::new(ch).max_decoding_message_size(MAX_PEER_MESSAGE).max_encoding_message_size(MAX_PEER_MESSAGE))
    }

    /// Hands an encoded request to raft: proposed here on the leader,
    /// forwarded to the leader from a follower.
    /// For a local proposal, returns where raft reports its outcome.
    pub(crate) async fn submit(&self, data: Bytes, deadline: Instant) -> Result<Option<WriteOutcome>, ServerError> {
        // Only a follower needs the leader's record (copying it costs allocations per write).
        let (leader, node) =
            self.with_leader(deadline, |l, node| (l, (l != self.member_id).then(|| node.clone()))).await?;
        let Some(node) = node else {
            let (responder, done) = ProgressResponder::<TypeConfig, ClientWriteResult<TypeConfig>>::complete_only();
            self.raft
                .client_write_ff(Cmd(data), Some(responder))
                .await
                .map_err(|e| ServerError::Internal(e.to_string()))?;
            return Ok(Some(done));
        };
        let client = self.peer_client(&node)?;
        self.forwarder.forward(client, self.cluster_id, leader, data, deadline).await.map(|()| None)
    }

    /// ReadIndex through the leader: the index to have applied before reading.
    pub(crate) async fn remote_read_index(&self, leader: u64, deadline: Instant) -> Result<u64, ServerError> {
        let (_, node) = self.wait_for_leader(deadline).await?;
        let mut client = self.peer_client(&node)?;
        match tokio::time::timeout_at(deadline, client.read_index(ReadIndexRequest { cluster_id: self.cluster_id }))
            .await
        {
            Ok(Ok(r)) => Ok(r.into_inner().index),
            Ok(Err(s)) if s.code() == tonic::Code::Unavailable => Err(ServerError::NoLeader),
            Ok(Err(s)) => Err(ServerError::Internal(format!("read index from leader {leader:x}: {}", s.message()))),
            Err(_) => Err(ServerError::Timeout),
        }
    }

    /// Peer RPC: raft AppendEntries.
    pub async fn peer_append_entries(&self, data: &[u8]) -> Result<Vec<u8>, ServerError> {
        use openraft::vote::RaftLeaderId;
        let req: openraft::raft::AppendEntriesRequest<TypeConfig> =
            decode(data).map_err(|e| ServerError::Internal(e.to_string()))?;
        let from = (*req.vote.leader_id().node_id(), req.vote.leader_id().term());
        let resp = self.raft.append_entries(req).await.map_err(|e| ServerError::Internal(e.to_string()))?;
        if !matches!(resp, openraft::raft::AppendEntriesResponse::HigherVote(_)) {
            *self.heard_leader.lock() = from;
        }
        Ok(encode(&resp).to_vec())
    }

    /// Peer RPC: a leader's stream of AppendEntries (encoded), handed to
    /// raft as they arrive; one encoded `StreamAppendResult` comes back for
    /// each, in order, and the stream ends after the first refusal. An input
    /// item that is an error (the caller's own, such as a message for
    /// another member), or does not decode, ends the input: the answers to
    /// what came before it are sent, then that error.
    pub fn peer_append_stream<S, E>(
        self: &std::sync::Arc<Self>,
        input: S,
    ) -> impl futures::Stream<Item = Result<Vec<u8>, E>> + Send + 'static
    where
        S: futures::Stream<Item = Result<Vec<u8>, E>> + Send + 'static,
        E: From<ServerError> + Send + 'static,
    {
        use futures::StreamExt;
        use openraft::vote::RaftLeaderId;
        use std::collections::VecDeque;
        use std::sync::Arc;

        // Who sent each request still unanswered, and why the input ended early.
        let senders: Arc<parking_lot::Mutex<VecDeque<(u64, u64)>>> = Default::default();
        let failed: Arc<parking_lot::Mutex<Option<E>>> = Default::default();
        let requests = {
            let (senders, failed) = (senders.clone(), failed.clone());
            input.scan((), move |(), item: Result<Vec<u8>, E>| {
                let req = item.and_then(|data| {
                    decode::<openraft::raft::AppendEntriesRequest<TypeConfig>>(&data)
                        .map_err(|e| ServerError::Internal(e.to_string()).into())
                });
                let next = match req {
                    Ok(req) => {
                        senders.lock().push_back((*req.vote.leader_id().node_id(), req.vote.leader_id().term()));
                        Some(req)
                    }
                    Err(e) => {
                        *failed.lock() = Some(e);
                        None
                    }
                };
                futures::future::ready(next)
            })
        };
        let this = self.clone();
        let answers = self.raft.stream_append(requests).map(move |res| {
            let from = senders.lock().pop_front();
            let res = res.map_err(|fatal| ServerError::Internal(fatal.to_string()))?;
            if let Some(from) = from
                && !matches!(res, Err(openraft::raft::StreamAppendError::HigherVote(_)))
            {
                *this.heard_leader.lock() = from;
            }
            Ok(encode(&res).to_vec())
        });
        let tail = futures::stream::once(async move { failed.lock().take() }).filter_map(|e| async move { e.map(Err) });
        answers.chain(tail)
    }

    /// The leader Status reports: this member if it leads, else raft's
    /// leader once an AppendEntries from it arrived in the current term
    /// (after a restart raft restores the vote, whose leader may be dead).
    pub(super) fn known_leader(&self, current: Option<u64>, term: u64) -> u64 {
        match current {
            Some(l) if l == self.member_id || *self.heard_leader.lock() == (l, term) => l,
            _ => 0,
        }
    }

    /// Peer RPC: raft Vote.
    pub async fn peer_vote(&self, data: &[u8]) -> Result<Vec<u8>, ServerError> {
        let req = decode(data).map_err(|e| ServerError::Internal(e.to_string()))?;
        let resp = self.raft.vote(req).await.map_err(|e| ServerError::Internal(e.to_string()))?;
        Ok(encode(&resp).to_vec())
    }

    /// Peer RPC: raft Pre-Vote (would this member grant the vote?).
    pub async fn peer_pre_vote(&self, data: &[u8]) -> Result<Vec<u8>, ServerError> {
        let req = decode(data).map_err(|e| ServerError::Internal(e.to_string()))?;
        let resp = self.raft.pre_vote(req).await.map_err(|e| ServerError::Internal(e.to_string()))?;
        Ok(encode(&resp).to_vec())
    }

    /// Peer RPC: raft TransferLeader (this member is asked to take over).
    pub async fn peer_transfer_leader(&self, data: &[u8]) -> Result<Vec<u8>, ServerError> {
        let req = decode(data).map_err(|e| ServerError::Internal(e.to_string()))?;
        let resp = self.raft.handle_transfer_leader(req).await.map_err(|e| ServerError::Internal(e.to_string()))?;
        Ok(encode(&resp).to_vec())
    }

    /// MoveLeader: hands leadership to `target`, a voter, and waits until it leads.
    pub async fn move_leader(&self, target: u64) -> Result<(), ServerError> {
        let deadline = Instant::now() + self.request_timeout();
        let (leader, _) = self.wait_for_leader(deadline).await?;
        if leader != self.member_id {
            return Err(ServerError::NotLeader);
        }
        if target == self.member_id {
            return Ok(());
        }
        let voters: Vec<u64> =
            self.raft.metrics().borrow_watched().membership_config.membership().voter_ids().collect();
        if !voters.contains(&target) {
            return Err(ServerError::BadLeaderTransferee);
        }
        self.raft.trigger().transfer_leader(target).await.map_err(|e| ServerError::Internal(e.to_string()))?;
        let mut rx = self.raft.metrics();
        loop {
            if rx.borrow_watched().current_leader == Some(target) {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(ServerError::Stopped),
                Err(_) => return Err(ServerError::Timeout),
            }
        }
    }

    /// On a graceful stop (SIGTERM, as kubelet stops a pod): if this member
    /// leads and another voter can take over, hands leadership to the voter
    /// whose log matches furthest and waits until it leads (at most the
    /// request timeout), as etcd does before it stops. The others then have
    /// a leader the moment this one is gone, instead of after an election
    /// timeout during which writes fail with "leader changed". Best effort:
    /// a failure is logged and the stop goes on.
    pub async fn transfer_leadership_on_stop(&self) {
        let (leads, others) = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            let voters =
                m.membership_config.membership().voter_ids().filter(|v| *v != self.member_id).collect::<Vec<_>>();
            (m.current_leader == Some(self.member_id), voters)
        };
        let target = others.into_iter().max_by_key(|v| (self.matched_index(*v), std::cmp::Reverse(*v)));
        let (true, Some(target)) = (leads, target) else { return };
        match self.move_leader(target).await {
            Ok(()) => tracing::info!(to = %format!("{target:x}"), "stopping: handed leadership over"),
            Err(e) => tracing::warn!(to = %format!("{target:x}"), error = %e, "stopping: leadership not handed over"),
        }
    }

    /// Peer RPCs Forward and ForwardBatch: a follower's client writes,
    /// proposed here (on the leader) in order. Nobody here waits for their
    /// results: each write's follower waits for its own apply. (Not
    /// `client_write_many`: its results cannot be ignored without openraft
    /// warning once per write that nobody listened.)
    pub async fn peer_forward(&self, requests: impl IntoIterator<Item = Bytes>) -> Result<(), ServerError> {
        if self.raft.metrics().borrow_watched().current_leader != Some(self.member_id) {
            return Err(ServerError::NotLeader);
        }
        for r in requests {
            self.raft.client_write_ff(Cmd(r), None).await.map_err(|e| ServerError::Internal(e.to_string()))?;
        }
        Ok(())
    }

    /// Where a snapshot streamed from the leader is written.
    pub fn snapshot_receive_path(&self) -> std::io::Result<std::path::PathBuf> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = self.cfg.data_dir.join("member").join("tmp");
        std::fs::create_dir_all(&dir)?;
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(dir.join(format!("recv-{}-{n}.snap", std::process::id())))
    }

    /// Peer RPC: install a full snapshot received from the leader.
    pub async fn peer_install_snapshot(&self, header: &[u8], path: std::path::PathBuf) -> Result<Vec<u8>, ServerError> {
        let (vote, meta): (crate::raft::Vote, openraft::type_config::alias::SnapshotMetaOf<crate::raft::TypeConfig>) =
            decode(header).map_err(|e| ServerError::Internal(e.to_string()))?;
        let snapshot = openraft::type_config::alias::SnapshotOf::<crate::raft::TypeConfig, crate::raft::SnapshotData> {
            meta,
            snapshot: crate::raft::SnapshotData::Received(path.clone()),
        };
        let res = self.raft.install_full_snapshot(vote, snapshot).await;
        let _ = std::fs::remove_file(&path);
        let resp = res.map_err(|e| ServerError::Internal(e.to_string()))?;
        Ok(encode(&resp).to_vec())
    }

    /// Peer RPC: ReadIndex on the leader.
    pub async fn peer_read_index(&self) -> Result<u64, ServerError> {
        let deadline = Instant::now() + self.request_timeout();
        match tokio::time::timeout_at(deadline, self.raft.ensure_linearizable(ReadPolicy::ReadIndex)).await {
            Ok(Ok(read)) => Ok(read.index()),
            Ok(Err(_)) => Err(ServerError::NoLeader),
            Err(_) => Err(ServerError::Timeout),
        }
    }
}
