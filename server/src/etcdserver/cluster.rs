//! Membership: MemberList, MemberAdd (learner or voter), MemberRemove,
//! MemberPromote and MemberUpdate over openraft's joint consensus, with
//! etcd's checks (strict reconfiguration, one learner, promotion at 90%).
//! Members publish their name and client URLs through raft after start.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kvd_api::etcdserverpb::{InternalRaftRequest, Member as PbMember, MemberAddRequest, MemberUpdateRequest};
use kvd_api::kvdpeerpb::ClusterOpRequest;
use kvd_api::kvdpeerpb::cluster_op_request::Op;
use kvd_api::membershippb::{Attributes, ClusterMemberAttrSetRequest};
use openraft::ChangeMembers;
use openraft::async_runtime::WatchReceiver;
use prost::Message;

use super::{EtcdServer, ServerError, added_member_id};
use crate::raft::Member;

/// A learner is promoted only with at least this share of the leader's log.
const PROMOTE_READY_RATIO: f64 = 0.9;

impl EtcdServer {
    /// This member's name and client URLs, as it publishes them.
    fn own_attributes(&self) -> Attributes {
        Attributes { name: self.cfg.name.clone(), client_urls: self.cfg.client_urls.clone() }
    }

    /// True once this member's name and client URLs, as configured, are
    /// applied here: etcd serves no client before its publish, and a member
    /// is not ready (`/readyz`) before it, so that no client is sent to a
    /// member that the member list still calls "unstarted".
    pub fn is_published(&self) -> bool {
        self.applier.member_attributes(self.member_id).is_some_and(|a| a == self.own_attributes())
    }

    /// Publishes this member's name and client URLs through raft, retrying
    /// until it is applied (etcd's publish). An attempt waits two election
    /// timeouts (at least a second), not the request timeout: a proposal
    /// forwarded to a leader that lost its term before committing it is never
    /// applied, and until the member's publish is, the member list shows the
    /// member with no name or client URLs (a backup passes it over, say).
    /// Publishing twice is harmless.
    pub fn publish_attributes(self: &std::sync::Arc<Self>) {
        let s = self.clone();
        tokio::spawn(async move {
            let attrs = s.own_attributes();
            loop {
                let req =
                    ClusterMemberAttrSetRequest { member_id: s.member_id, member_attributes: Some(attrs.clone()) };
                let res = if crate::failpoints::fails("publish_attributes") {
                    Err(ServerError::Timeout)
                } else {
                    let attempt = (2 * Duration::from_millis(s.cfg.election_timeout_ms)).max(Duration::from_secs(1));
                    let req = InternalRaftRequest { cluster_member_attr_set: Some(req), ..Default::default() };
                    s.propose_within(req, attempt).await
                };
                match res {
                    Ok(_) => {
                        tracing::info!(name = %attrs.name, client_urls = ?attrs.client_urls, "published member attributes");
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "publishing member attributes; will retry");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
    }

    /// Runs a membership change on the leader: here, or passed to the leader
    /// over the peer protocol. Returns the added member for MemberAdd.
    pub async fn cluster_op(&self, op: Op) -> Result<Option<PbMember>, ServerError> {
        match self.cluster_op_local(op.clone()).await {
            Err(ServerError::NotLeader) => {}
            other => return other,
        }
        let deadline = tokio::time::Instant::now() + self.request_timeout();
        let (_, leader) = self.wait_for_leader(deadline).await?;
        let mut client = self.peer_client(&leader)?;
        let req = ClusterOpRequest { cluster_id: self.cluster_id, op: Some(op) };
        match tokio::time::timeout_at(deadline, client.cluster_op(req)).await {
            Ok(Ok(r)) => {
                let m = r.into_inner().member;
                Ok(if m.is_empty() { None } else { PbMember::decode(m.as_slice()).ok() })
            }
            Ok(Err(s)) => Err(ServerError::Remote { code: s.code() as i32, message: s.message().to_string() }),
            Err(_) => Err(ServerError::Timeout),
        }
    }

    /// A membership change on this member, which must be the leader.
    pub async fn cluster_op_local(&self, op: Op) -> Result<Option<PbMember>, ServerError> {
        let bad = |e: prost::DecodeError| ServerError::Internal(format!("bad cluster request: {e}"));
        match op {
            Op::MemberAdd(b) => {
                let r = MemberAddRequest::decode(b.as_slice()).map_err(bad)?;
                self.member_add(r.peer_ur_ls, r.is_learner).await.map(Some)
            }
            Op::MemberRemove(id) => self.member_remove(id).await.map(|_| None),
            Op::MemberPromote(id) => self.member_promote(id).await.map(|_| None),
            Op::MemberUpdate(b) => {
                let r = MemberUpdateRequest::decode(b.as_slice()).map_err(bad)?;
                self.member_update(r.id, r.peer_ur_ls).await.map(|_| None)
            }
        }
    }

    /// True when this member is a learner (in the membership, not a voter).
    /// Read on every request, so it is a flag the metrics watcher keeps current.
    pub fn is_learner(&self) -> bool {
        self.learner.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the membership in `m` makes this member a learner.
    pub(crate) fn learner_in(&self, m: &crate::raft::StoredMembership) -> bool {
        m.membership().get_node(&self.member_id).is_some() && !m.membership().voter_ids().any(|v| v == self.member_id)
    }

    /// Every member, voters and learners, as etcd lists them.
    /// The member list once it shows a change (`done`) this member made or
    /// passed to the leader: a follower applies it a moment after the leader
    /// answered. Gives up after the request timeout and returns what it has.
    pub async fn member_list_showing(&self, done: impl Fn(&[PbMember]) -> bool) -> Vec<PbMember> {
        let deadline = tokio::time::Instant::now() + self.request_timeout();
        loop {
            let list = self.member_list();
            if done(&list) || tokio::time::Instant::now() >= deadline {
                return list;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn member_list(&self) -> Vec<PbMember> {
        let m = self.raft.metrics().borrow_watched().membership_config.clone();
        let voters: BTreeSet<u64> = m.membership().voter_ids().collect();
        m.membership()
            .nodes()
            .map(|(id, node)| {
                let attrs = self.applier.member_attributes(*id);
                PbMember {
                    id: *id,
                    name: attrs.as_ref().map(|a| a.name.clone()).unwrap_or_default(),
                    peer_ur_ls: node.peer_urls.clone(),
                    client_ur_ls: attrs.map(|a| a.client_urls).unwrap_or_default(),
                    is_learner: !voters.contains(id),
                }
            })
            .collect()
    }

    /// Voters that acknowledged the leader's heartbeat within an election
    /// timeout (itself included): the members etcd calls "started".
    fn started_voters(&self) -> BTreeSet<u64> {
        use openraft::Instant as _;
        let m = self.raft.metrics().borrow_watched().clone();
        let voters: BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
        let fresh = Duration::from_millis(self.cfg.election_timeout_ms);
        let mut started: BTreeSet<u64> = BTreeSet::from([self.member_id]);
        if let Some(hb) = &m.heartbeat {
            for (id, acked) in hb {
                if voters.contains(id) && acked.as_ref().is_some_and(|t| t.elapsed() < fresh) {
                    started.insert(*id);
                }
            }
        }
        started
    }

    /// etcd's strict reconfiguration check: the started members must form a
    /// quorum of the voters after the change.
    fn check_quorum_after(&self, voters_after: &BTreeSet<u64>) -> Result<(), ServerError> {
        self.check_quorum_with(voters_after, None)
    }

    /// [`check_quorum_after`](Self::check_quorum_after), counting `promoted`
    /// as started: a learner that is promoted has caught up, as etcd counts it.
    fn check_quorum_with(&self, voters_after: &BTreeSet<u64>, promoted: Option<u64>) -> Result<(), ServerError> {
        let mut started = self.started_voters();
        started.extend(promoted);
        let started = started.intersection(voters_after).count();
        if started < voters_after.len() / 2 + 1 {
            return Err(ServerError::NotEnoughStartedMembers);
        }
        Ok(())
    }

    fn raft_err(e: impl std::fmt::Display) -> ServerError {
        ServerError::Internal(e.to_string())
    }

    /// Membership changes run on the leader.
    async fn require_leader(&self) -> Result<(), ServerError> {
        let deadline = tokio::time::Instant::now() + self.request_timeout();
        let (leader, _) = self.wait_for_leader(deadline).await?;
        if leader != self.member_id {
            return Err(ServerError::NotLeader);
        }
        Ok(())
    }

    pub async fn member_add(&self, peer_urls: Vec<String>, is_learner: bool) -> Result<PbMember, ServerError> {
        self.require_leader().await?;
        if peer_urls.is_empty() || peer_urls.iter().any(|u| url::Url::parse(u).is_err()) {
            return Err(ServerError::InvalidMemberUrls);
        }
        let current = self.member_list();
        if current.iter().any(|m| m.peer_ur_ls.iter().any(|u| peer_urls.contains(u))) {
            return Err(ServerError::PeerUrlExists);
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let id = added_member_id(&peer_urls, &self.cfg.initial_cluster_token, now.as_nanos() as u64);
        if current.iter().any(|m| m.id == id) {
            return Err(ServerError::MemberIdExists);
        }
        if is_learner && current.iter().any(|m| m.is_learner) {
            return Err(ServerError::TooManyLearners);
        }
        if !is_learner {
            let mut after: BTreeSet<u64> = current.iter().filter(|m| !m.is_learner).map(|m| m.id).collect();
            after.insert(id);
            self.check_quorum_after(&after)?;
        }
        let node = Member { name: String::new(), peer_urls: peer_urls.clone(), client_urls: Vec::new() };
        self.raft.add_learner(id, node, false).await.map_err(Self::raft_err)?;
        if !is_learner {
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                .await
                .map_err(Self::raft_err)?;
        }
        tracing::info!(member_id = %format!("{id:x}"), ?peer_urls, is_learner, "added member");
        Ok(PbMember { id, name: String::new(), peer_ur_ls: peer_urls, client_ur_ls: Vec::new(), is_learner })
    }

    pub async fn member_remove(&self, id: u64) -> Result<(), ServerError> {
        self.require_leader().await?;
        let current = self.member_list();
        let Some(target) = current.iter().find(|m| m.id == id) else {
            return Err(ServerError::MemberNotFound);
        };
        let change = if target.is_learner {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        } else {
            let after: BTreeSet<u64> = current.iter().filter(|m| !m.is_learner && m.id != id).map(|m| m.id).collect();
            self.check_quorum_after(&after)?;
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        };
        // retain = false: a removed voter leaves the membership entirely.
        self.raft.change_membership(change, false).await.map_err(Self::raft_err)?;
        tracing::info!(member_id = %format!("{id:x}"), "removed member");
        Ok(())
    }

    pub async fn member_promote(&self, id: u64) -> Result<(), ServerError> {
        self.require_leader().await?;
        let current = self.member_list();
        match current.iter().find(|m| m.id == id) {
            None => return Err(ServerError::MemberNotFound),
            Some(m) if !m.is_learner => return Err(ServerError::NotLearner),
            Some(_) => {}
        }
        let leader_last = self.raft.metrics().borrow_watched().last_log_index.unwrap_or(0);
        if (self.matched_index(id) as f64) < leader_last as f64 * PROMOTE_READY_RATIO {
            return Err(ServerError::LearnerNotReady);
        }
        let mut after: BTreeSet<u64> = current.iter().filter(|m| !m.is_learner).map(|m| m.id).collect();
        after.insert(id);
        self.check_quorum_with(&after, Some(id))?;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(Self::raft_err)?;
        tracing::info!(member_id = %format!("{id:x}"), "promoted learner");
        Ok(())
    }

    pub async fn member_update(&self, id: u64, peer_urls: Vec<String>) -> Result<(), ServerError> {
        self.require_leader().await?;
        if peer_urls.is_empty() || peer_urls.iter().any(|u| url::Url::parse(u).is_err()) {
            return Err(ServerError::InvalidMemberUrls);
        }
        let current = self.member_list();
        if !current.iter().any(|m| m.id == id) {
            return Err(ServerError::MemberNotFound);
        }
        if current.iter().any(|m| m.id != id && m.peer_ur_ls.iter().any(|u| peer_urls.contains(u))) {
            return Err(ServerError::PeerUrlExists);
        }
        let name = self.applier.member_attributes(id).map(|a| a.name).unwrap_or_default();
        let node = Member { name, peer_urls, client_urls: Vec::new() };
        self.raft
            .change_membership(ChangeMembers::SetNodes(BTreeMap::from([(id, node)])), false)
            .await
            .map_err(Self::raft_err)?;
        Ok(())
    }
}
